"""The one way pycapstan runs subprocesses: argv lists, typed errors, no inherited secrets.

Every child gets a scrubbed environment (:func:`child_env`) and a private umask, and
dies with the CLI (``PR_SET_PDEATHSIG``, set by util-linux ``setpriv``) unless it is meant to
outlive it (``run -d``). No ``preexec_fn``: Python code between fork and exec is unsafe in a
threaded process and runs every library's at-fork hooks.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from functools import cache
from typing import IO, Any

from capstan.core.errors import CommandFailed, ToolMissing
from capstan.core.secrets import secret_name

LOG = logging.getLogger(__name__)

__all__ = ["child_env", "run", "spawn", "which"]

_INSTALL_HINTS = {
    "qemu-img": "apt-get install qemu-utils",
    "qemu-io": "apt-get install qemu-utils",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "nasm": "apt-get install nasm",
}
# What every child may see; plus LC_*, what a tool needs (_TOOL_ENV) and the names in
# $CAPSTAN_CHILD_ENV. A secret-looking name (token, secret, password, key, AWS_*) never.
_ALLOWED = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "TZ", "USER", "LOGNAME"})
_TOOL_ENV = {"VBoxManage": ("VBOX_USER_HOME", "VBOX_INSTALL_PATH"),
             "ssh": ("SSH_AUTH_SOCK",)}  # the agent's socket: ssh logs in as libvirt's would
CHILD_UMASK = 0o077
#: a spawned child (a VMM) makes sockets and logs for this user alone: 0600
SPAWN_UMASK = 0o177


def which(program: str) -> str:
    """Return the path of *program* or raise :class:`ToolMissing`."""
    path = shutil.which(program)
    if path is None:
        hint = _INSTALL_HINTS.get(program)
        suffix = f" (install it: {hint})" if hint else ""
        raise ToolMissing(f"{program} not found on PATH{suffix}")
    return path


def child_env(keep: Iterable[str] = ()) -> dict[str, str]:
    """The environment a child gets: the allow-list, *keep*, and ``$CAPSTAN_CHILD_ENV``'s
    comma-separated names, minus anything whose name looks like a credential."""
    extra = {*keep, *os.environ.get("CAPSTAN_CHILD_ENV", "").split(",")}
    return {k: v for k, v in os.environ.items()
            if (k in _ALLOWED or k.startswith("LC_") or k in extra) and not secret_name(k)}


@cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def _dying_with_parent(argv: list[str]) -> list[str]:
    """*argv* run so that it is killed (SIGKILL) when this process dies, even by
    ``kill -9``: no ``qemu-img convert`` outlives the command that started it.

    The kernel ties the signal to the thread that started the child: call it from a
    thread that outlives the child (the main thread, or one that waits for it). Where
    util-linux's ``setpriv`` is missing (not Linux), the child runs as it is."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def _resolve(argv: Sequence[str]) -> list[str]:
    """*argv* with its program found on PATH, or checked executable when it is a path
    (``setpriv`` would otherwise report a missing program only as an exit status)."""
    if "/" not in argv[0]:
        return [which(argv[0]), *argv[1:]]
    if not os.access(argv[0], os.X_OK):
        raise ToolMissing(f"{argv[0]} is not an executable program")
    return list(argv)


def run(
    argv: Sequence[str],
    *,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run *argv*, returning its output; raise :class:`CommandFailed` on failure."""
    argv = _resolve(argv)
    LOG.debug("run: %s", argv)
    try:
        done = subprocess.run(
            _dying_with_parent(argv),
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=child_env(_TOOL_ENV.get(os.path.basename(argv[0]), ())),
            umask=CHILD_UMASK,
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


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    outlive: bool = False,
    text: bool = False,
) -> subprocess.Popen[Any]:
    """Start *argv* in its own session, stdin from ``/dev/null``, and return it.

    Unless *outlive* (instances started with ``run -d``), the child is killed when
    the CLI dies, however it dies. Its umask is :data:`SPAWN_UMASK`."""
    argv = _resolve(argv)
    LOG.debug("spawn: %s", argv)
    try:
        return subprocess.Popen(
            argv if outlive else _dying_with_parent(argv), stdin=subprocess.DEVNULL,
            stdout=stdout, stderr=stderr, text=text,
            errors="replace" if text else None,
            env=child_env(_TOOL_ENV.get(os.path.basename(argv[0]), ())), umask=SPAWN_UMASK,
            start_new_session=True)
    except OSError as err:
        raise CommandFailed(argv, -1, str(err)) from err
