"""Interactive serial consoles: a byte pump between the user and a guest."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import termios
import tty
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["ESCAPE", "pump", "raw_terminal"]

ESCAPE = b"\x1d"  # Ctrl-], as in telnet and virsh console


def pump(guest: socket.socket, stdin: int, stdout: BinaryIO, escape: bytes | None) -> None:
    """Copy *stdin* to *guest* and *guest* to *stdout*.

    Returns when the guest closes the connection or *escape* is typed. Once
    *stdin* ends, output is still copied until the guest goes away.
    """
    sel = selectors.PollSelector()  # poll, unlike epoll, accepts regular files
    sel.register(guest, selectors.EVENT_READ, "guest")
    sel.register(stdin, selectors.EVENT_READ, "user")
    with sel:
        while True:
            for key, _ in sel.select():
                if key.data == "guest":
                    data = guest.recv(65536)
                    if not data:
                        return
                    stdout.write(data)
                    stdout.flush()
                    continue
                data = os.read(stdin, 4096)
                if not data:
                    sel.unregister(stdin)
                    continue
                if escape and escape in data:
                    guest.sendall(data.split(escape, 1)[0])
                    return
                guest.sendall(data)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal *fd* in raw mode, restoring it on every exit path."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
