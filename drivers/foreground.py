"""A foreground run's primitives (:class:`Foreground`): the instances service owns the
loop (timeout, Ctrl-C, the guest's verdict); a driver says only how to start the
instance, whether it still runs, what its console printed since, and how to stop it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from capstan.core.fs import read_from

if TYPE_CHECKING:
    from capstan.drivers.base import Driver

__all__ = ["Foreground", "LogFollower"]


class Foreground(ABC):
    """One started instance, followed until its guest ends."""

    #: seconds between two polls of :meth:`running` and :meth:`read`
    poll_seconds: float = 0.1
    #: what Ctrl-C prints before the guest is stopped
    interrupt_note: ClassVar[str] = "stopping the guest (Ctrl-C again stops it at once)"

    @abstractmethod
    def running(self) -> bool:
        """Whether the guest may still print (it holds resources)."""

    @abstractmethod
    def read(self) -> bytes:
        """What the console printed since the last read."""

    @abstractmethod
    def stop(self, *, hard: bool = False) -> None:
        """Stop the guest: gracefully, or (*hard*) at once."""

    def close(self) -> None:
        """Let go of the instance (always called, last)."""
        return

    def check_exit(self) -> None:
        """After the guest ended: raise when the backend, not the guest, failed."""
        return


class LogFollower(Foreground):
    """A driver's instance started with :meth:`Driver.start`, its state from
    :meth:`Driver.get`, its console from the file :meth:`Driver.log_path` names."""

    def __init__(self, driver: Driver, name: str) -> None:
        self.driver, self.name = driver, name
        self.log = driver.log_path(name)
        self.offset = 0
        driver.start(name)

    def running(self) -> bool:
        return self.driver.get(self.name).state.live

    def read(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            if self.log.stat().st_size < self.offset:
                self.offset = 0  # the log was restarted
        data = read_from(self.log, self.offset)
        self.offset += len(data)
        return data

    def stop(self, *, hard: bool = False) -> None:
        if hard:
            self.driver.stop(self.name, timeout=0)
        else:
            self.driver.stop(self.name)
