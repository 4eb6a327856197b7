"""Processes by pid, on any POSIX host: whether one runs, an identity that a reused pid
does not share (its start time), and its argv.

Linux reads ``/proc``; elsewhere (macOS) ``ps(1)`` answers, with the same fields.
A zombie counts as gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from capstan.core import proc
from capstan.core.errors import CommandFailed

__all__ = ["Process", "alive", "look", "processes", "token"]

PROC = Path("/proc")
#: ``ps`` columns: pid, real uid, state, start time (``lstart``: five words), argv
_PS_COLUMNS = "pid=,ruid=,stat=,lstart=,command="
_LSTART_WORDS = 5
_PS_FIELDS = 4 + _LSTART_WORDS  # pid, real uid, state, the start time's words, then the argv
_STARTTIME = 19  # /proc/PID/stat: field 22 (starttime), counted after the ")" of comm


@dataclass(frozen=True)
class Process:
    """One process as the host reports it."""

    pid: int
    started: str  # opaque, without "." or "-": differs for a later process of the same pid
    zombie: bool
    command: bytes  # its argv (NUL-separated from /proc, space-separated from ps)
    uid: int  # its real uid (a set-uid program's is its caller's): any user can copy an argv


def alive(pid: int | None) -> bool:
    """Whether a process *pid* exists (any user's; a zombie included), by signal 0."""
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True


def _has_proc() -> bool:
    return (PROC / "self" / "stat").is_file()


def _real_uid(status: str) -> int:
    """The real uid in the text of ``/proc/PID/status``; ValueError if there is none."""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError("no Uid line")


def _from_proc(pid: int) -> Process | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        command = (PROC / str(pid) / "cmdline").read_bytes()
        uid = _real_uid((PROC / str(pid) / "status").read_text())
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) <= _STARTTIME:
        return None
    return Process(pid, fields[_STARTTIME], fields[0] == "Z", command, uid)


def _from_ps_line(line: str) -> Process | None:
    parts = line.split(None, _PS_FIELDS - 1)
    if len(parts) < _PS_FIELDS - 1 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    started = " ".join(parts[3:3 + _LSTART_WORDS])
    command = parts[_PS_FIELDS - 1] if len(parts) == _PS_FIELDS else ""
    return Process(int(parts[0]), hashlib.sha1(started.encode()).hexdigest()[:16],
                   parts[2].startswith("Z"), command.encode(), int(parts[1]))


def _ps(*selection: str) -> list[Process]:
    try:
        out = proc.run(["ps", "-ww", "-o", _PS_COLUMNS, *selection], timeout=10).stdout
    except CommandFailed:  # ps exits 1 when no process matched
        return []
    found = (_from_ps_line(line) for line in out.decode(errors="replace").splitlines())
    return [p for p in found if p is not None]


def look(pid: int | None) -> Process | None:
    """Process *pid*, or None when there is none."""
    if not pid or not alive(pid):
        return None
    if _has_proc():
        return _from_proc(pid)
    return next((p for p in _ps("-p", str(pid)) if p.pid == pid), None)


def processes() -> Iterator[Process]:
    """Every process of the host."""
    if not _has_proc():
        yield from _ps("-ax")
        return
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (found := _from_proc(int(entry.name))) is not None:
            yield found


def token(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of process *pid* (this one by default): unique across pid
    reuse; ``""`` if it is gone."""
    if pid is None or pid == os.getpid():
        return _own_token(os.getpid())
    found = look(pid)
    return f"{pid}-{found.started}" if found and not found.zombie else ""


@cache
def _own_token(pid: int) -> str:
    """This process's token (keyed by pid: a forked child computes its own)."""
    found = look(pid)
    return f"{pid}-{found.started}" if found else ""
