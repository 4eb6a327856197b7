"""Host files are copied into the image by several threads at once; where the kernel cannot
copy between the two files (``copy_file_range`` fails, e.g. across filesystems) each thread
falls back to positioned reads and writes, and the image is the same to the byte."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest


def test_the_fallback_copy_gives_the_same_image(cli, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    rng = random.Random(5)
    for n in range(40):
        d = tree / f"d{n % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{n}").write_bytes(rng.randbytes(rng.randrange(1, 300_000)))
    fast, slow = tmp_path / "fast.qcow2", tmp_path / "slow.qcow2"
    assert cli("compose", "-l", "probe-loader", "-c", "/d0/f0", "-o", fast, tree).code == 0

    calls = []

    def refused(*_args: object, **_kwargs: object) -> int:
        calls.append(1)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refused)
    assert cli("compose", "-l", "probe-loader", "-c", "/d0/f0", "-o", slow, tree).code == 0
    assert len(calls) >= 40  # every file went the fallback's way
    assert fast.read_bytes() == slow.read_bytes()
