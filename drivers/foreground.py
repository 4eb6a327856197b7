"""A foreground run's primitives (:class:`Foreground`): the instances service owns the
loop (timeout, Ctrl-C, the guest's verdict); a driver says only how to start the
instance, whether it still runs, what its console printed since, and how to stop it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

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
    :meth:`Driver.get`, its console from :meth:`Driver.open_log` (read to its end once
    the guest has stopped)."""

    def __init__(self, driver: Driver, name: str) -> None:
        self.driver, self.name = driver, name
        self.log = driver.open_log(name)
        self.ended = False
        driver.start(name)

    def running(self) -> bool:
        self.ended = not self.driver.get(self.name).state.live
        return not self.ended

    def read(self) -> bytes:
        return self.log.rest() if self.ended else self.log.read()

    def close(self) -> None:
        self.log.close()

    def stop(self, *, hard: bool = False) -> None:
        if hard:
            self.driver.stop(self.name, timeout=0)
        else:
            self.driver.stop(self.name)
