"""A foreground QEMU run: the :class:`~capstan.drivers.qemu.machine.QemuMachine` the
driver launched bound to the CLI, and its console log from where this run starts."""

from __future__ import annotations

from pathlib import Path

from capstan.core.errors import BackendError, GuestFailure
from capstan.core.fs import read_from
from capstan.drivers.base import Foreground
from capstan.drivers.qemu.machine import QemuMachine

__all__ = ["MachineRun"]


class MachineRun(Foreground):
    """QEMU for instance *name*, followed through *console_log* past *offset*."""

    poll_seconds = 0.05
    interrupt_note = "stopping the guest (Ctrl-C again kills it)"

    def __init__(self, machine: QemuMachine, console_log: Path, offset: int) -> None:
        self.machine, self.log, self.offset = machine, console_log, offset

    def running(self) -> bool:
        return self.machine.running()

    def read(self) -> bytes:
        data = read_from(self.log, self.offset)
        self.offset += len(data)
        return data

    def stop(self, *, hard: bool = False) -> None:
        if hard:
            self.machine.kill()
        else:
            self.machine.shutdown()

    def close(self) -> None:
        self.machine.close()

    def check_exit(self) -> None:
        """GuestFailure when QEMU was killed by a signal, BackendError when it failed."""
        code = self.machine.exit_code()
        if code is not None and code < 0:
            raise GuestFailure(f"QEMU for {self.machine.name} was killed by signal {-code}")
        if code:
            raise BackendError(f"QEMU for {self.machine.name} exited with status {code}")
