"""Hostile kernels: a file given as a kernel (run --kernel, base import --kernel, pull -p
kernel) must be a PVH kernel ELF, read within its own bounds; anything else is one line
(65) and nothing is stored or booted."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core.errors import ImageError
from capstan.image.kernel import read_kernel
from capstan.image.loader import probe_kernel_path, probe_loader_path

from hostile_kit import Sandbox, check
from repo_server import Release, RepoServer

KERNEL = probe_kernel_path().read_bytes()
PHOFF = struct.unpack_from("<I", KERNEL, 28)[0]  # a 32-bit ELF: e_phoff


def _no_note() -> bytes:
    """The probe kernel with its notes' types changed: no PVH entry left."""
    data = bytearray(KERNEL)
    at = data.find(b"Xen\0")
    while at != -1:
        data[at - 4:at] = struct.pack("<I", 99)
        at = data.find(b"Xen\0", at + 4)
    return bytes(data)


BAD = {
    "not an ELF": (probe_loader_path().read_bytes(), "not an ELF file"),
    "no PVH note": (_no_note(), "no PVH entry"),
    "truncated": (KERNEL[:40], "points outside the file"),
    "headers outside": (KERNEL[:28] + struct.pack("<I", 1 << 30) + KERNEL[32:],
                        "points outside the file"),
    "big-endian": (KERNEL[:5] + b"\x02" + KERNEL[6:], "little-endian"),
    "empty": (b"", "not an ELF file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_base_import_refuses_what_is_no_kernel(cli, sandbox: Sandbox, tmp_path: Path,
                                               case: str) -> None:
    data, text = BAD[case]
    bad = tmp_path / "bad.elf"
    bad.write_bytes(data)
    result = cli("base", "import", bad, "--name", "k", "--kernel")
    check(result, 65, text)
    assert f"kernel {bad}: " in result.err  # the file given, not the repository's copy
    assert not (sandbox.root / "repository" / "k").exists()


def test_run_refuses_a_kernel_that_is_no_kernel(cli, sandbox: Sandbox, tmp_path: Path,
                                                image: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(_no_note())
    check(cli("run", "-i", image, "--kernel", bad, "--dry-run", "x"), 65, "no PVH entry")


def test_a_fifo_kernel_is_never_opened(cli, sandbox: Sandbox, tmp_path: Path,
                                       image: Path) -> None:
    fifo = tmp_path / "k.fifo"
    os.mkfifo(fifo)
    check(cli("run", "-i", image, "--kernel", fifo, "--dry-run", "x"), 65,
          "not a regular file")
    check(cli("base", "import", fifo, "--name", "k", "--kernel"), 65, "not a regular file")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    with RepoServer() as srv:
        srv.state.releases = [Release("v1", {
            "osv-loader.elf.x86_64.gz": gzip.compress(_no_note(), mtime=0)})]
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", "github")
        monkeypatch.setenv("CAPSTAN_GITHUB_API", f"{srv.url}/api")
        monkeypatch.setenv("CAPSTAN_GITHUB_REPO", "osv/test")
        yield srv


def test_pull_refuses_a_kernel_that_is_no_kernel(cli, sandbox: Sandbox,
                                                 server: RepoServer) -> None:
    check(cli("pull", "osv-loader", "-p", "kernel"), 65, "no PVH entry")
    assert not (sandbox.root / "repository" / "osv-loader").exists()


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, len(KERNEL)))
def test_any_damage_is_an_image_error(tmp_path_factory: pytest.TempPathFactory,
                                      flips: list[tuple[int, int]], cut: int) -> None:
    """Bytes of the headers changed and the file cut anywhere: the kernel is accepted or
    refused as an ImageError, never another exception."""
    data = bytearray(KERNEL[:cut])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    path = tmp_path_factory.mktemp("k") / "k.elf"
    path.write_bytes(bytes(data))
    with contextlib.suppress(ImageError):
        assert read_kernel(path) in ("i386", "x86_64")
