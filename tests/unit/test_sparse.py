"""Sparse sources: only a file's data is copied, its holes stay holes of the image, and the
image is the same bytes as one composed from a dense copy of the file."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.core.errors import LocalIOError
from capstan.image import compose, loader, sources
from capstan.image.formats import DiskFormat
from capstan.image.inspect import OsvImage
from capstan.image.rofs_reader import RofsReader
from capstan.image.tree import collect, with_base

CMDLINE = "--rootfs=rofs runscript /run/default;"
MIB = 1 << 20
GIB = 1 << 30


def spec(fmt: DiskFormat) -> compose.DiskSpec:
    return compose.DiskSpec(loader.read_loader(loader.probe_loader_path()), CMDLINE, fmt)


def sparse_file(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    """A file of *size* bytes whose only data are *pieces* (offset, bytes)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


def app(root: Path) -> Path:
    (root / "run").mkdir(parents=True)
    (root / "run" / "default").write_text("/big")
    return root


def same_chunks(a: Path, b: Path, chunk: int = 4 * MIB) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def test_a_sparse_gib_composes_into_a_small_clean_qcow2_with_the_same_content(
        tmp_path: Path) -> None:
    rng = random.Random(16)
    tree = app(tmp_path / "app")
    pieces = [(0, rng.randbytes(256 << 10)), (100 * MIB + 1234, rng.randbytes(256 << 10)),
              (700 * MIB, rng.randbytes(256 << 10)), (GIB - (256 << 10), rng.randbytes(256 << 10))]
    sparse_file(tree / "big", GIB, pieces)
    out = tmp_path / "a.qcow2"
    compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), out, tmp_path / "root")
    assert out.stat().st_blocks * 512 < 8 * MIB  # the holes were never written
    subprocess.run(["qemu-img", "check", "-f", "qcow2", str(out)], check=True,
                   capture_output=True)
    raw = tmp_path / "a.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out), str(raw)],
                   check=True, capture_output=True)
    with OsvImage(raw) as image, open(tree / "big", "rb") as source:
        for chunk in image.read("/big"):
            assert chunk == source.read(len(chunk))
        assert source.read(1) == b""


@pytest.mark.parametrize("fmt", [DiskFormat.QCOW2, DiskFormat.RAW])
def test_sparse_and_dense_copies_give_the_same_image(tmp_path: Path, fmt: DiskFormat) -> None:
    rng = random.Random(7)
    size = 24 * MIB + 333
    pieces = [(5 * MIB + 17, rng.randbytes(70_000)), (9 * MIB, rng.randbytes(3 * MIB)),
              (20 * MIB + 4096, rng.randbytes(5000))]  # leading and trailing holes
    sparse_tree, dense_tree = app(tmp_path / "sparse"), app(tmp_path / "dense")
    sparse_file(sparse_tree / "big", size, pieces)
    (dense_tree / "big").write_bytes((sparse_tree / "big").read_bytes())
    (sparse_tree / "empty").write_bytes(b"")
    (dense_tree / "empty").write_bytes(b"")
    sparse_file(sparse_tree / "hole", MIB, [])  # no data at all
    (dense_tree / "hole").write_bytes(bytes(MIB))
    images = []
    for tree, root in ((sparse_tree, tmp_path / "root"), (dense_tree, None),
                       (sparse_tree, None)):
        out = tmp_path / f"{len(images)}.img"
        compose.compose(with_base(collect(tree)), spec(fmt), out, root)
        images.append(out)
    assert same_chunks(images[0], images[1]) and same_chunks(images[1], images[2])
    dense_blocks = images[1].stat().st_blocks
    assert images[0].stat().st_blocks < dense_blocks - 2 * MIB // 512


def test_recompose_zeroes_the_holes_of_a_rewritten_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)
    tree = app(tmp_path / "app")
    big = tree / "big"
    out, root = tmp_path / "out.qcow2", tmp_path / "root"
    stamp = 1_600_000_000_000_000_000
    inodes = []
    for n in range(3):  # the third compose rewrites the spare: the first image, dense
        if n < 2:
            big.write_bytes(random.Random(n).randbytes(4 * MIB))
        else:
            sparse_file(big, 4 * MIB, [(MIB + 5, b"data")])
        os.utime(big, ns=(stamp + n * 10**9, stamp + n * 10**9))
        compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), out, root)
        inodes.append(out.stat().st_ino)
    assert inodes[2] == inodes[0]  # the spare was updated in place
    fresh = tmp_path / "fresh.qcow2"
    compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), fresh)
    assert out.read_bytes() == fresh.read_bytes()


def test_zero_range_writes_zeros_where_no_hole_can_be_punched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * MIB))
    fd = os.open(path, os.O_RDWR)
    try:
        sources.zero_range(fd, 100, 5)
        import ctypes

        class NoPunch:
            def __init__(self, *args: object, **kwargs: object) -> None:
                self.fallocate = lambda *a: -1

        monkeypatch.setattr(ctypes, "CDLL", NoPunch)
        sources.zero_range(fd, MIB - 1, 2 * MIB)
    finally:
        os.close(fd)
    data = path.read_bytes()
    expected = bytearray(b"x" * (3 * MIB))
    expected[100:105] = bytes(5)
    expected[MIB - 1:3 * MIB - 1] = bytes(2 * MIB)
    assert data == bytes(expected)


def test_data_spans_of_a_file_with_holes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    sparse_file(path, 8 * MIB, [(MIB, b"a" * 10), (5 * MIB, b"b" * MIB)])
    fd = os.open(path, os.O_RDONLY)
    try:
        spans = list(sources.data_spans(fd, 0, 8 * MIB))
        assert spans and all(start <= MIB for start, _ in spans[:1])
        covered = b"".join(os.pread(fd, n, at) for at, n in spans)
        assert covered.count(b"a") == 10 and covered.count(b"b") == MIB
        assert sum(n for _, n in spans) < 3 * MIB  # holes are left out (4 KiB blocks)
        assert list(sources.data_spans(fd, 2 * MIB, MIB)) == []  # all hole
        assert list(sources.data_spans(fd, 5 * MIB, 10)) == [(5 * MIB, 10)]  # dense
    finally:
        os.close(fd)


def test_a_new_image_is_preallocated_and_a_full_disk_is_said_before_any_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = app(tmp_path / "app")
    (tree / "big").write_bytes(random.Random(3).randbytes(3 * MIB))
    calls: list[tuple[int, int]] = []
    real = sources._fallocate

    def recording(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((mode, length))
        return real(fd, mode, offset, length)

    monkeypatch.setattr(sources, "_fallocate", recording)
    out = tmp_path / "a.qcow2"
    compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), out)
    assert len(calls) == 1 and calls[0][0] == 0 and calls[0][1] >= 3 * MIB  # one, whole files
    monkeypatch.setattr(sources, "_fallocate", lambda *a: errno.EOPNOTSUPP)
    same = tmp_path / "b.qcow2"  # a filesystem that cannot: the same bytes, written
    compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), same)
    assert same.read_bytes() == out.read_bytes()
    monkeypatch.setattr(sources, "_fallocate", lambda *a: errno.ENOSPC)
    copied: list[object] = []
    monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: copied.append(a) or 0)
    with pytest.raises(LocalIOError, match="No space left"):
        compose.compose(with_base(collect(tree)), spec(DiskFormat.QCOW2), tmp_path / "c.qcow2")
    assert not copied
    assert not [p for p in tmp_path.iterdir() if p.name == "c.qcow2" or ".capstan" in p.name]


def test_a_sparse_source_larger_than_the_free_space_composes_without_filling_the_disk(
        tmp_path: Path) -> None:
    tree = app(tmp_path / "app")
    free = os.statvfs(tmp_path)
    size = -(-free.f_bavail * free.f_frsize // GIB) * GIB + GIB  # more than is free
    sparse_file(tree / "big", size, [(size // 2, b"middle")])
    out = tmp_path / "a.raw"
    compose.compose(with_base(collect(tree)), spec(DiskFormat.RAW), out)
    assert out.stat().st_blocks * 512 < 8 * MIB  # never allocated, then punched
    with OsvImage(out) as image:
        start = image.partition.start
    with open(out, "rb") as f:
        inode = RofsReader(f, start).lookup("/big")
        f.seek(start + inode.offset * 512 + size // 2)
        assert f.read(6) == b"middle"
