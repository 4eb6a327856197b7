"""Hostile recompose state: damaged or forged records, a spare or an output swapped for a link
to another file. The compose still writes the fresh image's bytes and touches nothing else."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.image import recompose

from hostile_kit import Sandbox
from recompose_kit import change, compose


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)  # every change below sets a new mtime


def app(tmp_path: Path) -> Path:
    tree = tmp_path / "app"
    (tree / "run").mkdir(parents=True)
    (tree / "run" / "default").write_text("/hello")
    change(tree / "hello", b"h" * 9000)
    return tree


def state(sandbox: Sandbox, out: Path) -> Path:
    return recompose.state_dir(sandbox.root, out)


def _garbage(folder: Path, sandbox: Sandbox) -> None:
    for name in ("spare.json", "current.json"):
        (folder / name).write_bytes(b"\xff{not json")


def _wrong_types(folder: Path, sandbox: Sandbox) -> None:
    for name in ("spare.json", "current.json"):
        record = json.loads((folder / name).read_text())
        record["files"] = {k: "x" for k in record["files"]}
        record["image"] = {"ino": 1}
        (folder / name).write_text(json.dumps(record))


def _spare_links_to_victim(folder: Path, sandbox: Sandbox) -> None:
    (folder / "spare").unlink()
    (folder / "spare").symlink_to(sandbox.victim)


def _spare_is_the_victim_with_a_forged_record(folder: Path, sandbox: Sandbox) -> None:
    (folder / "spare").unlink()
    os.link(sandbox.victim, folder / "spare")
    record = json.loads((folder / "spare.json").read_text())
    st = os.lstat(folder / "spare")
    record["image"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    (folder / "spare.json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage", [_garbage, _wrong_types, _spare_links_to_victim,
                                    _spare_is_the_victim_with_a_forged_record])
def test_damaged_state_gives_the_fresh_image(cli, sandbox: Sandbox, tmp_path: Path,
                                             damage: Callable[[Path, Sandbox], None]) -> None:
    tree = app(tmp_path)
    out = tmp_path / "a.raw"
    compose(cli, tree, out)
    change(tree / "hello", b"i" * 9000)
    compose(cli, tree, out)  # now there is a spare and both records
    damage(state(sandbox, out), sandbox)
    change(tree / "hello", b"j" * 9000)
    assert compose(cli, tree, out) == compose(cli, tree, tmp_path / "fresh.raw")
    change(tree / "hello", b"k" * 9000)
    assert compose(cli, tree, out) == compose(cli, tree, tmp_path / "fresh.raw")


def test_an_output_swapped_for_a_link_is_replaced_not_followed(cli, sandbox: Sandbox,
                                                               tmp_path: Path) -> None:
    tree = app(tmp_path)
    out = tmp_path / "a.raw"
    compose(cli, tree, out)
    out.unlink()
    out.symlink_to(sandbox.victim)
    change(tree / "hello", b"l" * 9000)
    data = compose(cli, tree, out)
    assert not out.is_symlink()
    assert data == compose(cli, tree, tmp_path / "fresh.raw")
    assert not (state(sandbox, out) / "spare").exists()  # the victim never became the spare
