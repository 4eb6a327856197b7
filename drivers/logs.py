"""An instance's console log read as it grows (:class:`LogReader`): a local file
(:class:`FileLog`), or whatever a driver reads it through (a remote host's file over SSH)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

from capstan.core.fs import read_from

__all__ = ["FileLog", "LogReader"]


class LogReader(ABC):
    """A console log read in pieces: each read returns what is new since the last one.

    Opening one is free (nothing is read until :meth:`read` or :meth:`rest`); use it as a
    context manager, or call :meth:`close`."""

    @abstractmethod
    def read(self) -> bytes:
        """What the log gained since the last read (without waiting for more)."""

    def rest(self) -> bytes:
        """Everything not read yet, in full: called once the instance has stopped, or for
        a one-off read (then the whole log, which a driver may bound to its end)."""
        return self.read()

    def close(self) -> None:
        """Stop reading (always called, last)."""
        return

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FileLog(LogReader):
    """A local log file; a file that shrank was restarted (read again from its start)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size < self.offset:
                self.offset = 0
        data = read_from(self.path, self.offset)
        self.offset += len(data)
        return data
