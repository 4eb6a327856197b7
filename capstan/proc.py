"""The one way pycapstan runs subprocesses: argv lists, typed errors."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

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
