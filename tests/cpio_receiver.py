"""A stand-in for OSv's ZFS builder: handshake, then a strict newc cpio receiver.

Usage: cpio_receiver.py PORT OUTDIR [normal|silent|crash]
Prints a few boot lines and cpiod's handshake, accepts one connection on PORT,
checks every header (magic, 13 hex fields, NUL-terminated name, 4-byte padding,
sorted names, a final TRAILER!!!) and recreates the tree under OUTDIR.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path


def fail(message: str) -> None:
    print(f"cpio-receiver: {message}", flush=True)
    sys.exit(3)


_HEADER = 110  # bytes of a newc header
_MAGIC = b"070701"


def main() -> None:
    port, out, mode = int(sys.argv[1]), Path(sys.argv[2]), (sys.argv[3:] or ["normal"])[0]
    print("OSv v0.57.0 (stand-in builder)", flush=True)
    if mode == "crash":
        print("Aborted", flush=True)
        sys.exit(1)
    if mode == "silent":
        time.sleep(3600)
    server = socket.create_server(("127.0.0.1", port))
    print("Waiting for connection from host...", flush=True)
    conn, _ = server.accept()
    stream = conn.makefile("rb")

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            fail(f"stream ended inside an entry ({len(data)} of {n} bytes)")
        return data

    previous = ""
    while (entry := _entry(read)) is not None:
        path, mode_bits, data = entry
        if not path.startswith("/") or path <= previous:
            fail(f"names must be absolute and sorted: {previous!r} then {path!r}")
        previous = path
        _create(out / path.lstrip("/"), mode_bits, data, path)
        print(f"Adding {path}...", flush=True)
    print("cpiod finished", flush=True)


def _entry(read: Callable[[int], bytes]) -> tuple[str, int, bytes] | None:
    """The next entry's (path, mode, data) read and checked; None at the trailer."""
    head = read(_HEADER)
    if head[:6] != _MAGIC:
        fail(f"bad magic {head[:6]!r}")
    try:
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    except ValueError:
        fail("a header field is not hexadecimal")
    mode_bits, size, namesize = fields[1], fields[6], fields[11]
    name = read(namesize)
    if not name.endswith(b"\0"):
        fail("name is not NUL-terminated")
    read(-(_HEADER + namesize) % 4)
    path = name[:-1].decode()
    if path == "TRAILER!!!":
        return None
    data = read(size)
    read(-size % 4)
    return path, mode_bits, data


def _create(target: Path, mode_bits: int, data: bytes, path: str) -> None:
    """Make *target* as the entry for guest *path* says."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISDIR(mode_bits):
        target.mkdir(exist_ok=True)
    elif stat.S_ISLNK(mode_bits):
        os.symlink(data.decode(), target)
    elif stat.S_ISREG(mode_bits):
        target.write_bytes(data)
        target.chmod(stat.S_IMODE(mode_bits))
    else:
        fail(f"unexpected mode {mode_bits:o} for {path}")


if __name__ == "__main__":
    main()
