"""Hostile recompose cache entries met by the spare collector: links, files and records
naming paths outside. Only state directories are removed, never what a link or a record
names, and a record that is a FIFO never blocks the compose."""

from __future__ import annotations

import os
from pathlib import Path

from capstan.image import recompose

from hostile_kit import Sandbox
from recompose_kit import compose

DIGEST = "0123456789abcdef0123456789abcdef"


def test_planted_cache_entries_touch_nothing_outside(cli, sandbox: Sandbox,
                                                     tmp_path: Path) -> None:
    tree = tmp_path / "app"
    (tree / "run").mkdir(parents=True)
    (tree / "run" / "default").write_text("/hello")
    (tree / "hello").write_bytes(b"h" * 9000)
    out = tmp_path / "a.raw"
    compose(cli, tree, out)
    cache = sandbox.root / "cache" / "compose"
    (cache / DIGEST).symlink_to(sandbox.outside / "dir")  # a link: never followed
    names = [f"{n:032x}" for n in range(1, 5)]
    (cache / names[0]).write_bytes(b"a file, not a state")
    (cache / names[1]).mkdir()  # its record names the victim, which exists: kept
    (cache / names[1] / "output").write_bytes(os.fsencode(sandbox.victim))
    (cache / names[1] / "link").symlink_to(sandbox.victim)
    (cache / names[2]).mkdir()  # its record is a FIFO: unknown output, kept
    os.mkfifo(cache / names[2] / "output")
    (cache / names[3]).mkdir()  # its output is gone: removed, the link in it only
    (cache / names[3] / "output").write_bytes(os.fsencode(tmp_path / "gone.raw"))
    (cache / names[3] / "victim").symlink_to(sandbox.victim)
    (cache / names[3] / "dir").symlink_to(sandbox.outside / "dir")
    compose(cli, tree, tmp_path / "b.raw")
    left = {p.name for p in cache.iterdir()}
    assert left == {DIGEST, *names[:3], recompose.state_dir(sandbox.root, out).name,
                    recompose.state_dir(sandbox.root, tmp_path / "b.raw").name}
    assert (cache / names[1] / "link").is_symlink()
