"""Hostile sparse sources: a file with holes that shrinks, grows or gets data in a hole
between ``SEEK_DATA`` and its copy, or turns into a FIFO once listed. The compose fails in one
line, leaves no output and no temporary file, and touches nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.image import rofs, tree

from hostile_kit import Sandbox, check

MIB = 1 << 20
SIZE = 64 * MIB


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)


def app(tmp_path: Path) -> Path:
    """A tree whose ``/big`` has data at 0 and 40 MiB, holes elsewhere."""
    root = tmp_path / "app"
    (root / "run").mkdir(parents=True)
    (root / "run" / "default").write_text("/big")
    with open(root / "big", "wb") as f:
        f.truncate(SIZE)
        f.write(b"a" * MIB)
        f.seek(40 * MIB)
        f.write(b"b" * MIB)
    return root


def _shrink(big: Path) -> None:
    os.truncate(big, 2 * MIB)


def _grow(big: Path) -> None:
    with open(big, "ab") as f:
        f.write(b"more")


def _fill_a_hole(big: Path) -> None:
    with open(big, "r+b") as f:
        f.seek(20 * MIB)
        f.write(b"written into a hole")


@pytest.mark.parametrize("mutate", [_shrink, _grow, _fill_a_hole])
def test_a_file_changed_between_seek_data_and_its_copy_fails_the_compose(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mutate: Callable[[Path], None]) -> None:
    source = app(tmp_path)
    real = rofs.data_spans

    def racing(fd: int, start: int, size: int) -> Iterator[tuple[int, int]]:
        spans = real(fd, start, size)
        first = next(spans, None)
        if size == SIZE:
            mutate(source / "big")
        if first is not None:
            yield first
        yield from spans

    monkeypatch.setattr(rofs, "data_spans", racing)
    out = tmp_path / "out" / "a.qcow2"
    out.parent.mkdir()
    check(cli("compose", "-l", "probe-loader", "-o", out, source), 74,
          "changed while composing")
    assert list(out.parent.iterdir()) == []


def test_a_sparse_file_turned_into_a_fifo_is_never_opened_for_real(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = app(tmp_path)
    real = tree.collect

    def collect_then_swap(path: Path) -> object:
        entries = real(path)
        (source / "big").unlink()
        os.mkfifo(source / "big")
        return entries

    monkeypatch.setattr(tree, "collect", collect_then_swap)
    out = tmp_path / "out" / "a.qcow2"
    out.parent.mkdir()
    check(cli("compose", "-l", "probe-loader", "-o", out, source), 65, "is a FIFO")
    assert list(out.parent.iterdir()) == []
