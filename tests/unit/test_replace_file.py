"""An output is replaced in one step, exchanged with the file it replaces (a rename over a
file makes ext4 write the new one back first): links stay links, directories stay."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from capstan.core import fs
from capstan.core.fs import replace_file


def test_a_new_target_is_renamed_and_an_existing_file_exchanged_then_removed(
        tmp_path: Path) -> None:
    new, target, kept = tmp_path / "new", tmp_path / "target", tmp_path / "kept"
    new.write_bytes(b"one")
    replace_file(new, target)
    assert target.read_bytes() == b"one" and not new.exists()
    os.link(target, kept)  # the previous image, kept elsewhere (as the spare is)
    new.write_bytes(b"two")
    inode = new.stat().st_ino
    replace_file(new, target)
    assert target.read_bytes() == b"two" and target.stat().st_ino == inode
    assert not new.exists() and kept.read_bytes() == b"one"


def test_a_link_is_replaced_never_followed_and_a_directory_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    new, target = tmp_path / "new", tmp_path / "target"
    target.symlink_to(victim)
    new.write_bytes(b"image")
    replace_file(new, target)
    assert not target.is_symlink() and target.read_bytes() == b"image"
    assert victim.read_bytes() == b"victim"
    folder = tmp_path / "folder"
    (folder / "inside").mkdir(parents=True)
    new.write_bytes(b"image")
    with pytest.raises(OSError):
        replace_file(new, folder)
    assert (folder / "inside").is_dir() and new.read_bytes() == b"image"


def test_a_target_turned_into_a_directory_meanwhile_is_put_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new, target = tmp_path / "new", tmp_path / "target"
    new.write_bytes(b"image")
    target.write_bytes(b"old")
    real = fs.exchange
    calls: list[int] = []

    def racing(a: Path, b: Path) -> None:
        if not calls:
            b.unlink()
            (b / "inside").mkdir(parents=True)  # swapped for a directory after the check
        calls.append(1)
        real(a, b)

    monkeypatch.setattr(fs, "exchange", racing)
    with pytest.raises(OSError) as caught:
        replace_file(new, target)
    assert caught.value.errno == errno.EEXIST
    assert (target / "inside").is_dir() and new.read_bytes() == b"image"
