"""The one way pycapstan runs subprocesses: argv lists, typed errors."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from capstan.errors import CommandFailed, ToolMissing

LOG = logging.getLogger(__name__)

__all__ = ["run", "which"]

_INSTALL_HINTS = {
    "qemu-img": "apt-get install qemu-utils",
    "qemu-io": "apt-get install qemu-utils",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "nasm": "apt-get install nasm",
}


def which(program: str) -> str:
    """Return the path of *program* or raise :class:`ToolMissing`."""
    path = shutil.which(program)
    if path is None:
        hint = _INSTALL_HINTS.get(program)
        suffix = f" (install it: {hint})" if hint else ""
        raise ToolMissing(f"{program} not found on PATH{suffix}")
    return path


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die (SIGKILL) when this process dies, even
    by ``kill -9``: no ``qemu-img convert`` outlives the command that started it."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm


def run(
    argv: Sequence[str],
    *,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run *argv*, returning its output; raise :class:`CommandFailed` on failure."""
    argv = [which(argv[0]) if "/" not in argv[0] else argv[0], *argv[1:]]
    LOG.debug("run: %s", argv)
    try:
        done = subprocess.run(
            argv,
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent(),
        )
    except subprocess.TimeoutExpired as err:
        raise CommandFailed(argv, -1, f"timed out after {timeout} s") from err
    except OSError as err:
        raise CommandFailed(argv, -1, str(err)) from err
    if done.returncode != 0:  # some tools (vmrun) report errors on stdout
        raise CommandFailed(
            argv, done.returncode, (done.stderr or done.stdout).decode(errors="replace")
        )
    return done
