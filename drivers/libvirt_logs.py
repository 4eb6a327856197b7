"""Console logs of domains on a remote libvirt host, read over the SSH transport its URI
names: no daemon of ours on the host, only ``sh``, ``stat``, ``tail`` and ``head``.

A remote domain's serial console is logged by libvirt (virtlogd) to
:func:`remote_log_file` on its host. A small POSIX shell program reads it there and
sends frames (``OFFSET LENGTH\\n`` then exactly LENGTH bytes): once (the log's last
:data:`LOG_LIMIT` bytes at most, or what follows an offset), or, following, every new
piece as it is written. It reads only a regular file with one link that is still the one
at the path once opened: a symbolic link, FIFO, device or hard link planted there is
refused, never followed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from capstan.core import proc
from capstan.core.errors import BackendError, CapstanError, InputError
from capstan.core.names import check_name
from capstan.core.secrets import redact
from capstan.drivers.libvirt_ssh import SSH_TRANSPORTS, SshTarget
from capstan.drivers.logs import FileLog, LogReader

LOG = logging.getLogger(__name__)

__all__ = ["LOG_LIMIT", "REMOTE_LOG_DIR", "RemoteLog", "open_console", "read_frames",
           "remote_log_file", "remove_remote_log"]

#: where a remote system libvirt's QEMU logs live (virtlogd writes our console log there)
REMOTE_LOG_DIR = "/var/log/libvirt/qemu"
#: the most of a log read at once: ``logs`` shows its last LOG_LIMIT bytes
LOG_LIMIT = 8 << 20
_CHUNK = 1 << 20  # the most one frame carries while following
_POLL = "0.5"  # seconds between two looks at a followed log (on the host)
_TIMEOUT = 300.0  # seconds a one-off read may take
_STOP_WAIT = 5.0
_HEADER = re.compile(rb"(\d{1,19}) (\d{1,19})\n")
_HEADER_MAX = 42
_SHOWN = 300  # characters of the host's error shown
_TAIL = 64 << 10  # the last bytes of ssh's stderr kept (a host may send it without end)

# $1 file, $2 offset (-1: the last $3 bytes), $3 limit, $4 chunk, $5 follow (1) or once.
_SCRIPT = r"""
f=$1 n=$2 lim=$3 chunk=$4 follow=$5
die() { printf 'capstan-log: %s\n' "$*" >&2; exit 3; }
while :; do
  len=0
  if [ -L "$f" ]; then die "$f is a symbolic link: refused"; fi
  if [ -e "$f" ]; then
    [ -f "$f" ] || die "$f is not a regular file: refused"
    exec 3<"$f"
    id=$(stat -L -c '%d:%i %h %s %f' /dev/fd/3) || die "cannot inspect $f"
    at=$(stat -c '%d:%i' -- "$f") || die "cannot inspect $f"
    set -- $id
    [ "$1" = "$at" ] || die "$f changed while it was opened: refused"
    [ "$2" = 1 ] || die "$f has other hard links: refused"
    [ $(( 0x$4 >> 12 )) = 8 ] || die "$f is not a regular file: refused"
    size=$3
    [ "$n" -gt "$size" ] && n=0
    if [ "$n" -lt 0 ]; then n=$((size - lim)); [ "$n" -lt 0 ] && n=0; fi
    len=$((size - n)); [ "$len" -gt "$chunk" ] && len=$chunk
    printf '%s %s\n' "$n" "$len"
    if [ "$len" -gt 0 ]; then
      { tail -c +$((n + 1)) <&3; cat /dev/zero; } 2>/dev/null | head -c "$len"
    fi
    exec 3<&-
    n=$((n + len))
  else
    [ "$n" -lt 0 ] && n=0
    printf '%s 0\n' "$n"
  fi
  [ "$follow" = 1 ] || exit 0
  [ "$len" -lt "$chunk" ] && sleep $POLL
done
""".replace("$POLL", _POLL)


def remote_log_file(uri: str, name: str) -> str | None:
    """The console log file of domain *name* on the host of *uri*, or None where it is
    not kept (a session URI: its QEMU cannot write there)."""
    if urlparse(uri).path.rstrip("/") != "/system":
        return None
    return f"{REMOTE_LOG_DIR}/capstan-{check_name(name, 'instance', '')}.console.log"


def open_console(uri: str, local: Path, name: str, *, remote: bool) -> LogReader:
    """The console log of *name*: the *local* file, or (*remote*) the host's file read
    over SSH (the URI is checked now; nothing is read yet)."""
    if not remote:
        return FileLog(local)
    target = SshTarget.parse(uri)
    path = remote_log_file(uri, name)
    if path is None:
        raise BackendError(f"instances at {redact(uri)} keep no console log (only a "
                           "remote /system URI does): use capstan console")
    return RemoteLog(target, path)


def remove_remote_log(uri: str, name: str) -> None:
    """Remove the console log of a deleted domain from its remote host, where SSH reaches
    it (nothing for a local URI; a failure is only a warning: the domain is gone)."""
    parts = urlparse(uri)
    path = remote_log_file(uri, name)
    if not parts.hostname or path is None or parts.scheme.partition("+")[2] not in SSH_TRANSPORTS:
        return
    try:
        session = _Session(SshTarget.parse(uri), ["rm", "-f", "--", path])
        try:
            session.wait()
        finally:
            session.stop()
    except CapstanError as err:  # the log is left behind, nothing else
        LOG.warning("could not remove %s on the host: %s", path, redact(str(err)))


def read_frames(stream: IO[bytes], emit: Callable[[int, bytes], None], limit: int) -> None:
    """Parse the remote program's frames from *stream* until its end, handing each
    (offset, bytes) to *emit*; a malformed or oversized frame is an InputError."""
    while header := stream.readline(_HEADER_MAX):
        match = _HEADER.fullmatch(header)
        if match is None or int(match[2]) > limit:
            raise InputError(f"the host sent a malformed log frame {header[:40]!r}")
        want, data = int(match[2]), b""
        while len(data) < want and (piece := stream.read(want - len(data))):
            data += piece
        if len(data) < want:
            raise InputError("the host's log frame ended early")
        emit(int(match[1]), data)


class _Session:
    """One ssh running a remote command, its frames parsed by a thread into a queue
    (bounded: a slow reader holds the host back); its errors kept for :meth:`check`."""

    def __init__(self, target: SshTarget, command: list[str], limit: int = 0) -> None:
        self.frames: queue.Queue[tuple[int, bytes]] = queue.Queue(maxsize=16)
        self.error: CapstanError | OSError | ValueError | None = None
        self._tail = bytearray()  # the last _TAIL bytes of ssh's stderr
        self.proc = proc.spawn(target.argv(command), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self.limit = limit
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            read_frames(self.proc.stdout, lambda o, d: self.frames.put((o, d)), self.limit)
        except (CapstanError, OSError, ValueError) as err:  # reported by check()
            self.error = err

    def _drain(self) -> None:
        """Read ssh's stderr to its end, keeping only its last _TAIL bytes."""
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self.proc.stderr.fileno(), _TAIL):
                self._tail += chunk
                del self._tail[:-_TAIL]

    def take(self) -> list[tuple[int, bytes]]:
        """The frames received so far."""
        got = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self.frames.get_nowait())
        return got

    def wait(self, timeout: float = _TIMEOUT) -> list[tuple[int, bytes]]:
        """Every frame, once the command has ended (killed after *timeout*, or once it
        sent more than its limit)."""
        deadline = time.monotonic() + timeout
        got: list[tuple[int, bytes]] = []
        total = 0
        while self.thread.is_alive() or not self.frames.empty():
            if time.monotonic() > deadline or total > self.limit:
                self.stop()
                raise (BackendError("reading the console log over ssh timed out")
                       if total <= self.limit else
                       InputError("the host sent more of the log than was asked for"))
            with contextlib.suppress(queue.Empty):
                got.append(self.frames.get(timeout=0.1))
                total += len(got[-1][1])
        self.check(final=True)
        return got

    def check(self, *, final: bool = False) -> None:
        """Raise what went wrong: ssh or the remote program failing, or a bad frame."""
        status = self.proc.wait(timeout=_STOP_WAIT) if final else self.proc.poll()
        if status not in (0, None):
            raise BackendError(f"reading the console log over ssh failed: {self._why(status)}")
        if isinstance(self.error, CapstanError):
            raise self.error
        if self.error is not None:
            raise BackendError(f"reading the console log over ssh: {self.error}")

    def _why(self, status: int) -> str:
        self._drainer.join(_STOP_WAIT)
        lines = bytes(self._tail).decode(errors="replace").strip().splitlines()
        text = redact(lines[-1] if lines else f"exit status {status}")
        return "".join(c if c.isprintable() else "?" for c in text)[:_SHOWN]

    def stop(self) -> None:
        """End the command (and the thread, once its pipe closes)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_STOP_WAIT)
        while self.thread.is_alive():
            self.take()  # a full queue would keep the thread from seeing the end
            self.thread.join(0.05)
        self._drainer.join(_STOP_WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class RemoteLog(LogReader):
    """A domain's console log on its libvirt host: followed through one long-running ssh
    (started on the first :meth:`read`); :meth:`rest` reads what is left in one call."""

    def __init__(self, target: SshTarget, path: str) -> None:
        self.target, self.path = target, path
        self.offset = -1  # nothing read yet: start at the last LOG_LIMIT bytes
        self._follow: _Session | None = None

    def _command(self, *, follow: bool) -> list[str]:
        return ["sh", "-c", _SCRIPT, "capstan-log", self.path, str(self.offset),
                str(LOG_LIMIT), str(_CHUNK if follow else LOG_LIMIT), str(int(follow))]

    def _consume(self, frames: list[tuple[int, bytes]]) -> bytes:
        for start, data in frames:
            self.offset = start + len(data)
        return b"".join(data for _start, data in frames)

    def read(self) -> bytes:
        if self._follow is None:
            self._follow = _Session(self.target, self._command(follow=True), _CHUNK)
        data = self._consume(self._follow.take())
        self._follow.check()
        return data

    def rest(self) -> bytes:
        data = b""
        if self._follow is not None:
            data = self._consume(self._follow.take())
            self.close()
        session = _Session(self.target, self._command(follow=False), LOG_LIMIT)
        try:
            return data + self._consume(session.wait())
        finally:
            session.stop()

    def close(self) -> None:
        if self._follow is not None:
            self._follow.stop()
            self._follow = None

    def __repr__(self) -> str:
        return f"RemoteLog({self.target.host}:{self.path})"
