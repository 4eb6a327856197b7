"""Helpers of the hostile suite: snapshots of what an attacker aims at, and the one-line check."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


def snapshot(top: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mode, content digest or link target) of everything below *top*."""
    found: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink():
                what = "->" + os.readlink(path)
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            found[str(path.relative_to(top))] = (st.st_mode, what)
    return found


@dataclass
class Sandbox:
    """A directory an attacker aims at (``outside``) and the run's CAPSTAN_ROOT."""

    root: Path
    outside: Path
    victim: Path
    before: dict[str, tuple[int, str]] = field(default_factory=dict)

    def assert_untouched(self) -> None:
        assert snapshot(self.outside) == self.before, "something outside the sandbox changed"


def check(result, code: int, text: str = "") -> None:  # type: ignore[no-untyped-def]
    """*result* failed with *code* in one ``capstan: `` line containing *text*."""
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capstan: "), result.err
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.err
