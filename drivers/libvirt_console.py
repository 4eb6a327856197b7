"""A libvirt console stream relayed to the user's terminal (``capstan console -p
libvirt``)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = ["relay"]


def relay(stream: Any, stdin: int, stdout: BinaryIO, escape: bytes | None,
          send: Callable[[bytes], None]) -> None:
    """Copy the guest's output from *stream* to *stdout* and *stdin* to the guest (through
    *send*) until the guest goes away or *escape* is typed; the stream is then finished.
    Once *stdin* ends, output is still copied until the guest goes away."""
    import libvirt

    finished = threading.Event()

    def guest_to_user() -> None:
        with contextlib.suppress(libvirt.libvirtError):  # "stream is closed" after stop
            while data := stream.recv(65536):
                if isinstance(data, bytes):
                    stdout.write(data)
                    stdout.flush()
        finished.set()

    reader = threading.Thread(target=guest_to_user, daemon=True)
    reader.start()
    try:
        while not finished.is_set():
            data = _read_ready(stdin, 0.2)
            if data is None:
                continue
            if not data:  # end of input: keep copying output until the guest ends
                finished.wait()
                break
            if escape and escape in data:
                send(data.split(escape, 1)[0])
                break
            send(data)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            stream.finish()


def _read_ready(fd: int, timeout: float) -> bytes | None:
    """Bytes from *fd* when it has some within *timeout*, else None."""
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 4096) if readable else None
