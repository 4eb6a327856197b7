"""One QEMU process, owned like ``qemu.machine.QEMUMachine``.

A :class:`QemuMachine` is either launched here (its child process) or attached to
a running one (``run -d`` instances outlive the CLI; a later CLI finds them by
their QMP socket). It keeps ONE QMP connection for its life, gives access to the
console, and stops QEMU with a ladder whose every step is bounded:
``system_powerdown``, then ``quit``, then SIGTERM and SIGKILL.

``qemu.qmp`` is imported on first connect only, so ``capstan --help`` and
``capstan instances`` never load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from capstan.core import pids, proc
from capstan.core.errors import BackendError, GuestTimeout

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

__all__ = ["QemuMachine", "find_pid", "pid_alive"]

LOG = logging.getLogger(__name__)
_OUTPUT_LINES = 200  # kept of a machine's captured output


def pid_alive(pid: int | None, marker: str) -> bool:
    """True when *pid* runs and its argv contains *marker* (guards against reuse)."""
    found = pids.look(pid)
    return found is not None and _runs(found, marker)


def _runs(found: pids.Process, marker: str) -> bool:
    # the marker is a path, found in argv as QEMU reads it (commas doubled), of a process of
    # ours: any user can run a process whose argv holds it (ps shows QEMU's argv to all)
    return (not found.zombie and found.uid == os.getuid()
            and marker.replace(",", ",,").encode() in found.command)


def find_pid(marker: str) -> int | None:
    """The live process whose argv contains *marker* (a QMP socket path), if any."""
    return next((p.pid for p in pids.processes() if _runs(p, marker)), None)


class QemuMachine:
    """One QEMU process: launched by :meth:`launch` or found by :meth:`attach`.

    *name* labels messages; *qmp* is the QMP socket (None: the machine has no
    QMP, e.g. the ZFS builder, and stopping it is killing it); *log* receives
    QEMU's stdout and stderr (None: they are captured, see :meth:`wait_for_output`).
    """

    def __init__(self, name: str, *, qmp: Path | None, log: Path | None = None) -> None:
        self.name = name
        self.qmp_path = qmp
        self.log_path = log
        self.pid: int | None = None
        self._child: subprocess.Popen[Any] | None = None
        self._qmp: QMPClient | None = None
        self._loop: asyncio.Runner | None = None
        self._output: deque[str] = deque(maxlen=_OUTPUT_LINES)
        self._reader: threading.Thread | None = None

    @classmethod
    def attach(cls, name: str, *, qmp: Path, pid: int | None,
               log: Path | None = None) -> QemuMachine:
        """The running QEMU whose QMP socket is *qmp* (*pid* when known and still it;
        else found by its argv); connects on first command."""
        machine = cls(name, qmp=qmp, log=log)
        machine.pid = pid if pid_alive(pid, str(qmp)) else find_pid(str(qmp))
        return machine

    def __enter__(self) -> QemuMachine:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the process --------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, outlive: bool = False) -> int:
        """Start QEMU with *argv* (unless *outlive*, it dies with the CLI); its pid."""
        if self.qmp_path is not None:
            self.qmp_path.unlink(missing_ok=True)
        if self.log_path is None:
            self._child = proc.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, outlive=outlive)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        else:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "ab") as log:  # sockets and console.log: 0600 (umask 177)
                self._child = proc.spawn(argv, stdout=log, stderr=log, outlive=outlive)
        self.pid = self._child.pid
        return self.pid

    def launch(self, argv: Sequence[str], *, outlive: bool = False,
               timeout: float = 30) -> None:
        """:meth:`spawn`, then :meth:`wait_ready`."""
        self.spawn(argv, outlive=outlive)
        self.wait_ready(timeout)

    def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        for line in self._child.stdout:
            self._output.append(line.rstrip())

    def running(self) -> bool:
        """Whether the process still runs (a child is reaped when it ended)."""
        if self._child is not None:
            return self._child.poll() is None
        return pid_alive(self.pid, str(self.qmp_path))

    def exit_code(self) -> int | None:
        """The exit status of a launched QEMU that ended (None while it runs); its
        captured output is then complete."""
        code = None if self._child is None else self._child.poll()
        if code is not None and self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to end; its status (launched) or None (attached).

        Raises :class:`GuestTimeout` when it still runs after *timeout*."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() > deadline:
                raise GuestTimeout(f"{self.name} did not finish within {timeout:.0f} s: "
                                   f"{self.last_line()}")
            time.sleep(0.05 if self._child is None else 0.01)
        return self.exit_code()

    def _ended_within(self, timeout: float) -> bool:
        with contextlib.suppress(GuestTimeout):
            self.wait(timeout)
            return True
        return False

    # -- output and console -------------------------------------------------

    def last_line(self) -> str:
        """The last non-blank line QEMU wrote (captured output, else its log)."""
        lines: Sequence[str] = self._output
        if self.log_path is not None and not lines:
            with contextlib.suppress(OSError):
                lines = self.log_path.read_text(errors="replace").splitlines()
        return next((ln for ln in reversed(lines) if ln.strip()), "no output")

    def wait_for_output(self, line: str, timeout: float) -> None:
        """Wait until the captured output holds *line* (e.g. a guest's handshake)."""
        deadline = time.monotonic() + timeout
        while line not in (ln.strip() for ln in list(self._output)):
            code = self.exit_code()
            if code is not None:
                raise BackendError(f"{self.name} exited ({code}) before it was ready: "
                                   f"{self.last_line()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"{self.name} was not ready within {timeout:.0f} s: "
                                   f"{self.last_line()}")
            time.sleep(0.02)

    def open_console(self, console: Path) -> socket.socket:
        """A connection to the interactive console socket *console*."""
        guest = socket.socket(socket.AF_UNIX)
        try:
            guest.connect(str(console))
        except OSError as err:
            guest.close()
            raise BackendError(f"cannot attach to the console of {self.name}: "
                               f"{err.strerror}") from err
        return guest

    # -- QMP: one connection for the machine's life ---------------------------

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for QMP's greeting: QEMU has then set up every device and forward.

        A QEMU that already ended with status 0 (the guest ran and powered off)
        is ready too; one that failed raises :class:`BackendError` with its log's
        last line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code == 0:
                return
            if code is not None:
                last = self.last_line()
                reason = f"exit status {code}" if last == "no output" else last
                raise BackendError(f"QEMU failed to start instance {self.name}: {reason}")
            if self.qmp_path is None:
                return
            if self.qmp_path.exists():
                with contextlib.suppress(BackendError):
                    self._connect(2)
                    return
            time.sleep(0.005)
        self.kill()
        raise BackendError(f"QEMU did not answer on QMP within {timeout} s")

    def _run(self, coro: Any, timeout: float, what: str) -> Any:
        """Run one QMP coroutine on this machine's own event loop."""
        assert self._loop is not None
        try:
            return self._loop.run(asyncio.wait_for(coro, timeout))
        except (TimeoutError, OSError, EOFError) as err:
            raise BackendError(f"QMP {what} on {self.qmp_path} failed: "
                               f"{err or type(err).__name__}") from err
        except Exception as err:  # qemu.qmp's own errors (ConnectError, ExecuteError...)
            raise BackendError(f"QMP {what} failed: {err}") from err

    def _connect(self, timeout: float) -> None:
        """Connect once (greeting and capabilities negotiation included)."""
        if self._qmp is not None:
            return
        if self.qmp_path is None:
            raise BackendError(f"{self.name} has no QMP socket")
        from qemu.qmp import QMPClient  # here: only commands that talk to QEMU load it

        self._loop = self._loop or asyncio.Runner()
        client = QMPClient(self.name)
        try:
            self._run(client.connect(str(self.qmp_path)), timeout, "connect")
        except BackendError:  # QEMU ended mid-handshake: collect the client's failed tasks
            with contextlib.suppress(BackendError):
                self._run(client.disconnect(), timeout, "disconnect")
            raise
        self._qmp = client

    def command(self, name: str, arguments: Mapping[str, object] | None = None,
                timeout: float = 5) -> Any:
        """Run QMP command *name* over the machine's one connection."""
        self._connect(timeout)
        assert self._qmp is not None
        return self._run(self._qmp.execute(name, arguments), timeout, name)

    def close(self) -> None:
        """Close the QMP connection (QEMU keeps running); safe to call twice."""
        client, self._qmp = self._qmp, None
        if client is not None and self._loop is not None:
            with contextlib.suppress(BackendError):
                self._run(client.disconnect(), 2, "disconnect")
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self.exit_code()  # joins the output's reader once QEMU has ended

    # -- the stop ladder ------------------------------------------------------

    def shutdown(self, timeout: float = 30) -> None:
        """Stop QEMU: ``system_powerdown`` (the guest's ACPI power button) for up to
        *timeout* s, then ``quit`` for 5 s, then :meth:`kill`."""
        if not self.running():
            self.close()
            return
        if self.qmp_path is not None:
            with contextlib.suppress(BackendError):
                self.command("system_powerdown")
                if self._ended_within(timeout):
                    self.close()
                    return
            LOG.warning("instance %s ignored the ACPI power button: quitting QEMU", self.name)
            with contextlib.suppress(BackendError):
                self.command("quit")
                if self._ended_within(5):
                    self.close()
                    return
        self.kill()

    def kill(self) -> None:
        """SIGTERM, then SIGKILL, 5 s each; closes QMP. Safe to call twice."""
        self.close()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                break
            assert self.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            if self._ended_within(5):
                break
        else:
            raise BackendError(f"could not kill QEMU process {self.pid} of {self.name}")
        self.exit_code()
