"""Recompose spares are bounded: the state of an output that is gone is removed, and only the
:data:`recompose.KEEP` outputs composed last keep theirs; a state in use is left alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capstan.core import fs, identity
from capstan.core.errors import LocalIOError
from capstan.image import compose, loader, recompose
from capstan.image.formats import DiskFormat
from capstan.image.tree import collect, with_base

CMDLINE = "--rootfs=rofs runscript /run/default;"
_STAMP = [1_600_000_000_000_000_000]


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "run").mkdir(parents=True)
    (root / "run" / "default").write_text("/hello")
    (root / "hello").write_bytes(b"h" * 70_000)
    return root


def compose_to(tree: Path, out: Path, root: Path) -> None:
    """Compose *tree* into *out* with the recompose state below *root*, twice (the second
    keeps the first image as the spare); the state is the newest there."""
    ld = loader.read_loader(loader.probe_loader_path())
    for _ in range(2):
        compose.compose(with_base(collect(tree)), compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW),
                        out, root)
    _STAMP[0] += 1_000_000_007  # timestamps of quick composes may tie: order them
    os.utime(recompose.state_dir(root, out) / "current.json", ns=(_STAMP[0], _STAMP[0]))


def states(root: Path) -> set[str]:
    return {p.name for p in (root / "cache" / "compose").iterdir()}


def test_only_the_outputs_composed_last_keep_their_spares(
        tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recompose, "KEEP", 3)
    root = tmp_path / "root"
    outs = [tmp_path / f"{n}.raw" for n in range(5)]
    for out in outs:
        compose_to(tree, out, root)
        assert (recompose.state_dir(root, out) / "spare").is_file()
    assert states(root) == {recompose.state_dir(root, out).name for out in outs[2:]}
    compose_to(tree, outs[0], root)  # composed again: it is among the last three
    assert states(root) == {recompose.state_dir(root, out).name
                            for out in (outs[0], *outs[3:])}
    assert all(out.is_file() for out in outs)  # the images themselves are never touched


def test_the_state_of_an_output_that_is_gone_is_removed(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    compose_to(tree, a, root)
    a.unlink()
    compose_to(tree, b, root)
    assert states(root) == {recompose.state_dir(root, b).name}


def test_a_state_in_use_is_left_for_later(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    compose_to(tree, a, root)
    a.unlink()
    busy = recompose.state_dir(root, a)
    with fs.held(root, "compose", busy.name):  # another compose of a holds it
        compose_to(tree, b, root)
        assert (busy / "spare").is_file()
    compose_to(tree, b, root)
    assert not busy.exists()


def test_a_state_that_cannot_be_recorded_is_forgotten_not_a_failure(
        tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, out = tmp_path / "root", tmp_path / "a.raw"

    def full(path: Path, data: bytes, mode: int = 0o644, **kwargs: object) -> None:
        raise LocalIOError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(recompose, "atomic_write", full)
    ld = loader.read_loader(loader.probe_loader_path())
    for _ in range(2):  # the image is written; its state is not kept
        compose.compose(with_base(collect(tree)), compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW),
                        out, root)
    assert out.is_file()
    assert not (recompose.state_dir(root, out) / "current.json").exists()


def test_records_are_not_synced_other_writes_are(tree: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    compose_to(tree, tmp_path / "a.raw", tmp_path / "root")  # a crash voids the records
    assert synced == []
    fs.atomic_write(tmp_path / "other", b"data")
    assert len(synced) == 1
