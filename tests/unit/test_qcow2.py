"""The direct qcow2 writer: qemu-img finds it clean and reads the same disk as the raw form."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.image import compose, loader, qcow2
from capstan.image.formats import DiskFormat
from capstan.image.rofs import DirEntry, Entry, FileEntry, SymlinkEntry

MIB = 1 << 20
CMDLINE = "--rootfs=rofs runscript /run/default;"


def qemu_img(*args: str) -> str:
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def same_disk(raw: Path, image: Path) -> None:
    """qemu-img finds *image* clean and its disk equal to the raw file *raw*."""
    assert "No errors were found" in qemu_img("check", "-f", "qcow2", str(image))
    qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(image))


def write_both(tmp: Path, virtual: int, extents: list[tuple[int, int]]) -> tuple[Path, Path]:
    """Random bytes at *extents* of a disk of *virtual* bytes, as raw and as qcow2."""
    rng = random.Random(virtual)
    raw, image = tmp / "disk.raw", tmp / "disk.qcow2"
    layout = qcow2.plan(virtual, extents)
    with open(raw, "wb") as r, open(image, "wb") as q:
        r.truncate(virtual)
        qcow2.write_metadata(q.fileno(), layout)
        for start, length in extents:
            data = rng.randbytes(length)
            r.seek(start)
            r.write(data)
            q.seek(layout.host(start))
            q.write(data)
    return raw, image


def test_metadata_is_clean_and_reads_back(tmp_path: Path) -> None:
    # data in three L2 tables' ranges (each covers 512 MiB), one range across a boundary
    extents = [(0, 100_000), (512 * MIB - 4096, 8192), (1300 * MIB, 3 * MIB + 17)]
    raw, image = write_both(tmp_path, 2048 * MIB + 512, extents)
    same_disk(raw, image)
    info = qemu_img("info", "--output=json", str(image))
    assert '"virtual-size": 2147484160' in info
    layout = qcow2.plan(2048 * MIB + 512, extents)
    assert layout.l2_tables == (0, 1, 2) and layout.l1_entries == 5
    assert image.stat().st_size == layout.total * qcow2.CLUSTER


def test_refcount_blocks_cover_a_large_file() -> None:
    # 3 GiB of data: 49,152 clusters, more than one refcount block (32,768) describes
    layout = qcow2.plan(100 << 30, [(0, 3 << 30)])
    assert layout.refcount_blocks == 2
    assert layout.refcount_blocks * 32768 >= layout.total
    assert layout.refcount_table_clusters == 1 and layout.l1_entries == 200


def test_unallocated_byte_has_no_host_offset() -> None:
    layout = qcow2.plan(4 * MIB, [(0, 512), (2 * MIB, 512)])
    assert layout.host(511) == layout.data_at * qcow2.CLUSTER + 511
    assert layout.host(2 * MIB) == (layout.data_at + 1) * qcow2.CLUSTER
    with pytest.raises(ValueError):
        layout.host(MIB)
    with pytest.raises(ValueError):
        qcow2.plan(MIB, [(MIB, 1)])


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * MIB), st.integers(1, 300_000)),
                min_size=0, max_size=6), st.integers(0, 3 * MIB))
def test_any_ranges_give_a_clean_image(tmp_path_factory: pytest.TempPathFactory,
                                       extents: list[tuple[int, int]], extra: int) -> None:
    tmp = tmp_path_factory.mktemp("q")
    end = max((s + n for s, n in extents), default=0)
    disjoint, last = [], -1
    for start, length in sorted(extents):
        if start > last:
            disjoint.append((start, length))
            last = start + length
    raw, image = write_both(tmp, (end + extra + 511) // 512 * 512 or 512, disjoint)
    same_disk(raw, image)


def _tree(sizes: list[int], tmp: Path) -> list[Entry]:
    rng = random.Random(len(sizes))
    entries: list[Entry] = [DirEntry("/dev"), SymlinkEntry("/etc/mnttab", "/proc/mounts")]
    for n, size in enumerate(sizes):
        host = tmp / f"f{n}"
        host.write_bytes(rng.randbytes(size))
        entries.append(FileEntry(f"/d{n % 3}/f{n}", size, source=host))
    entries.append(FileEntry("/run/default", 6, data=b"/hello"))
    return entries


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 200_000), max_size=12), st.booleans(),
       st.sampled_from([0, 8 * MIB]))
def test_compose_qcow2_is_the_raw_disk(tmp_path_factory: pytest.TempPathFactory,
                                       sizes: list[int], kernel_less: bool, size: int) -> None:
    tmp = tmp_path_factory.mktemp("c")
    entries = _tree(sizes, tmp)
    ld = None if kernel_less else loader.read_loader(loader.probe_loader_path())
    raw = compose.compose(entries, compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW, size),
                          tmp / "a.raw")
    image = compose.compose(entries, compose.DiskSpec(ld, CMDLINE, DiskFormat.QCOW2, size),
                            tmp / "a.qcow2")
    assert raw.virtual_size == image.virtual_size
    same_disk(raw.path, image.path)


def test_compose_qcow2_is_byte_reproducible_and_sparse(tmp_path: Path) -> None:
    entries = _tree([5 * MIB, 0, 70_000, 1], tmp_path)
    ld = loader.read_loader(loader.probe_loader_path())
    digests = set()
    for name in ("a.qcow2", "b.qcow2"):
        out = compose.compose(entries, compose.DiskSpec(ld, CMDLINE, DiskFormat.QCOW2,
                                                        256 * MIB), tmp_path / name).path
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
        assert out.stat().st_size < 6 * MIB  # the 256 MiB disk's zeros take no clusters
    assert len(digests) == 1
    raw = compose.compose(entries, compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW, 256 * MIB),
                          tmp_path / "a.raw")
    assert raw.path.stat().st_blocks * 512 < 7 * MIB  # raw is sparse too
    same_disk(raw.path, tmp_path / "a.qcow2")
