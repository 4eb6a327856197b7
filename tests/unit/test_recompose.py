"""Recomposing in place of the previous image: the same bytes as a fresh compose, and only
when the spare is certainly what its record says."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core import identity
from capstan.core.errors import LocalIOError
from capstan.image import compose, loader, recompose, rofs
from capstan.image.formats import DiskFormat
from capstan.image.rofs import Entry, FileEntry
from capstan.image.tree import collect, with_base

CMDLINE = "--rootfs=rofs runscript /run/default;"
_STAMP = [1_600_000_000_000_000_000]


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made by a test are seconds old at most: trust their timestamps (every change
    below also sets a distinct mtime, so a coarse clock cannot hide it)."""
    monkeypatch.setattr(identity, "RACY_NS", 0)


def change(path: Path, data: bytes) -> None:
    """Write *data* to *path* and give it a timestamp no earlier write had."""
    path.write_bytes(data)
    _STAMP[0] += 1_000_000_007
    os.utime(path, ns=(_STAMP[0], _STAMP[0]))


def make_tree(root: Path, sizes: list[int]) -> list[Path]:
    rng = random.Random(len(sizes))
    (root / "run").mkdir(parents=True)
    (root / "run" / "default").write_text("/hello")
    files = []
    for n, size in enumerate(sizes):
        files.append(root / f"d{n % 3}" / f"f{n}")
        files[-1].parent.mkdir(exist_ok=True)
        change(files[-1], rng.randbytes(size))
    return files


def entries(root: Path) -> list[Entry]:
    return with_base(collect(root))


def spec(fmt: DiskFormat) -> compose.DiskSpec:
    return compose.DiskSpec(loader.read_loader(loader.probe_loader_path()), CMDLINE, fmt)


def cached(root: Path, out: Path, cache: Path, fmt: DiskFormat) -> bytes:
    compose.compose(entries(root), spec(fmt), out, cache)
    return out.read_bytes()


def fresh(root: Path, out: Path, fmt: DiskFormat) -> bytes:
    compose.compose(entries(root), spec(fmt), out)
    return out.read_bytes()


@pytest.mark.parametrize("fmt", [DiskFormat.QCOW2, DiskFormat.RAW])
def test_recompose_reuses_the_spare_and_equals_a_fresh_compose(
        tmp_path: Path, fmt: DiskFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_tree(tmp_path / "app", [70_000, 3, 0, 200_000, 512])
    out, cache = tmp_path / "out" / "a.img", tmp_path / "root"
    out.parent.mkdir()
    cached(tmp_path / "app", out, cache, fmt)
    first = out.stat().st_ino
    change(files[0], b"x" * 70_000)
    cached(tmp_path / "app", out, cache, fmt)
    copied: list[str] = []
    for name in ("_copy_host", "_copy_streamed"):  # host files, and bytes in memory
        real = getattr(rofs, name)
        monkeypatch.setattr(rofs, name, lambda e, *a, real=real: (copied.append(e.path),
                                                                  real(e, *a))[1])
    change(files[3], b"y" * 200_000)
    data = cached(tmp_path / "app", out, cache, fmt)
    assert out.stat().st_ino == first  # the first image, updated in place
    # changed since that image was made, and bytes held in memory
    assert sorted(copied) == ["/d0/f0", "/d0/f3", "/etc/fstab", "/etc/hosts"]
    assert data == fresh(tmp_path / "app", tmp_path / f"ref.{fmt.label}", fmt)


def test_a_spare_someone_has_open_is_left_alone(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "app", [5000, 7000])
    out, cache = tmp_path / "a.qcow2", tmp_path / "root"
    original = cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
    with open(out, "rb") as running_vm:  # e.g. QEMU still using this generation
        change(files[0], b"1" * 5000)
        cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
        change(files[1], b"2" * 7000)
        data = cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
        assert os.fstat(running_vm.fileno()).st_ino != out.stat().st_ino
        assert running_vm.read() == original
    assert data == fresh(tmp_path / "app", tmp_path / "ref.qcow2", DiskFormat.QCOW2)


def test_an_output_linked_elsewhere_never_becomes_the_spare(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "app", [5000])
    out, cache = tmp_path / "a.raw", tmp_path / "root"
    original = cached(tmp_path / "app", out, cache, DiskFormat.RAW)
    os.link(out, tmp_path / "keep.raw")
    for n in range(3):
        change(files[0], bytes([n]) * 5000)
        data = cached(tmp_path / "app", out, cache, DiskFormat.RAW)
    assert (tmp_path / "keep.raw").read_bytes() == original
    assert data == fresh(tmp_path / "app", tmp_path / "ref.raw", DiskFormat.RAW)


def test_a_source_changed_during_its_copy_fails_the_compose(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_tree(tmp_path / "app", [5000, 6000])
    out, cache = tmp_path / "a.qcow2", tmp_path / "root"
    before = cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
    real = rofs._copy_host

    def racing(entry: FileEntry, *args: object) -> None:
        real(entry, *args)  # type: ignore[arg-type]
        if entry.source == files[1]:
            change(files[1], b"z" * 6000)  # same size, written after it was copied

    monkeypatch.setattr(rofs, "_copy_host", racing)
    change(files[1], b"w" * 6000)
    with pytest.raises(LocalIOError, match="changed while composing"):
        cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".capstan-tmp")]
    monkeypatch.setattr(rofs, "_copy_host", real)
    data = cached(tmp_path / "app", out, cache, DiskFormat.QCOW2)
    assert data == fresh(tmp_path / "app", tmp_path / "ref.qcow2", DiskFormat.QCOW2)


def test_recently_changed_sources_are_not_trusted(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 2_000_000_000)
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    print_ = recompose.fingerprint(FileEntry("/f", 3, source=path))
    assert print_ is not None
    assert recompose._settled(print_, print_[-1] + 1_000) is None
    assert recompose._settled(print_, print_[-1] + 3_000_000_000) == print_


_EDITS = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["same", "grow", "touch"])),
                  min_size=1, max_size=5)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 140_000), min_size=1, max_size=6), _EDITS,
       st.sampled_from([DiskFormat.QCOW2, DiskFormat.RAW]))
def test_any_edit_sequence_gives_the_fresh_bytes(tmp_path_factory: pytest.TempPathFactory,
                                                 sizes: list[int],
                                                 edits: list[tuple[int, str]],
                                                 fmt: DiskFormat) -> None:
    tmp = tmp_path_factory.mktemp("r")
    files = make_tree(tmp / "app", sizes)
    out, cache = tmp / "a.img", tmp / "root"
    cached(tmp / "app", out, cache, fmt)
    for n, (index, how) in enumerate(edits):
        path = files[index % len(files)]
        data = path.read_bytes()
        if how == "same":
            data = bytes([n + 1]) * len(data)
        elif how == "grow":
            data += b"+" * 700
        change(path, data)
        assert cached(tmp / "app", out, cache, fmt) == fresh(tmp / "app", tmp / "ref", fmt)


def test_a_failed_update_leaves_the_output_and_is_never_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_tree(tmp_path / "app", [5000, 6000])
    out, root = tmp_path / "a.qcow2", tmp_path / "root"
    cached(tmp_path / "app", out, root, DiskFormat.QCOW2)
    change(files[0], b"a" * 5000)
    current = cached(tmp_path / "app", out, root, DiskFormat.QCOW2)  # a spare exists now

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rofs, "_copy_host", full_disk)
    change(files[1], b"b" * 6000)
    with pytest.raises(LocalIOError, match="No space left"):
        cached(tmp_path / "app", out, root, DiskFormat.QCOW2)
    assert out.read_bytes() == current
    state = recompose.state_dir(root, out)
    assert not (state / "spare").exists() and not (state / "spare.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(identity, "RACY_NS", 0)
    data = cached(tmp_path / "app", out, root, DiskFormat.QCOW2)
    assert data == fresh(tmp_path / "app", tmp_path / "ref.qcow2", DiskFormat.QCOW2)


def test_records_of_an_earlier_boot_are_not_trusted(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_tree(tmp_path / "app", [5000])
    out, root = tmp_path / "a.raw", tmp_path / "root"
    cached(tmp_path / "app", out, root, DiskFormat.RAW)
    change(files[0], b"c" * 5000)
    cached(tmp_path / "app", out, root, DiskFormat.RAW)  # a spare exists now
    spare = (recompose.state_dir(root, out) / "spare").stat().st_ino
    monkeypatch.setattr(recompose, "boot_id", lambda: "another-boot")
    change(files[0], b"d" * 5000)
    data = cached(tmp_path / "app", out, root, DiskFormat.RAW)
    assert out.stat().st_ino != spare  # a fresh image, not the spare updated
    assert data == fresh(tmp_path / "app", tmp_path / "ref.raw", DiskFormat.RAW)
