"""Hostile kernel-less images: a run's command line never lands in the filesystem, and
damaged filesystems are refused in one line; a --kernel that is not a file is refused."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from capstan.image import compose
from capstan.image.formats import DiskFormat

from hostile_kit import Sandbox, check
from test_rofs_golden import example_entries


def _kernel_less(path: Path) -> Path:
    compose.compose(example_entries(), compose.DiskSpec(None, "", DiskFormat.RAW), path)
    return path


@pytest.mark.parametrize("args", [("-e", "/evil"), ("--boot", "x"), ("--env", "A=B")])
def test_run_refuses_to_write_a_command_line_into_it(cli, sandbox: Sandbox, tmp_path: Path,
                                                     args: tuple[str, ...]) -> None:
    image = _kernel_less(tmp_path / "kl.raw")
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    check(cli("run", "-i", image, *args, "--dry-run", "kl"), 65, "kernel-less image")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(("offset", "value", "text"), [
    (0x200, b"\0" * 8, "ROFS"),                            # superblock magic wiped
    (0x200 + 24, struct.pack("<Q", 1 << 40), "ROFS"),       # tables far beyond the disk
])
def test_damaged_kernel_less_images_are_refused(cli, sandbox: Sandbox, tmp_path: Path,
                                                offset: int, value: bytes, text: str) -> None:
    image = _kernel_less(tmp_path / "kl.raw")
    data = bytearray(image.read_bytes())
    data[offset:offset + len(value)] = value
    image.write_bytes(data)
    check(cli("image", "ls", "-R", image), 65, text)


@pytest.mark.parametrize("kind", ["dir", "fifo", "victim-link-dir"])
def test_kernel_that_is_not_a_file(cli, sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    image = _kernel_less(tmp_path / "kl.raw")
    kernel = tmp_path / "k"
    if kind == "dir":
        kernel.mkdir()
    elif kind == "fifo":
        os.mkfifo(kernel)  # never opened: a FIFO would block the run
    else:
        kernel.symlink_to(sandbox.outside / "dir")
    check(cli("run", "-i", image, "--machine", "microvm", "--kernel", kernel, "--dry-run",
              "k"), 65, "not a regular file")


def test_direct_command_line_is_still_validated(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    image = _kernel_less(tmp_path / "kl.raw")
    check(cli("run", "-i", image, "--machine", "microvm", "--kernel", "probe-kernel",
              "-e", "/x " + "y" * 1100, "--dry-run", "k"), 65, "at most 1023")
