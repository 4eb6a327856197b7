"""The hostile suite's sandbox: a canary tree outside CAPSTAN_ROOT that no case may touch.

Every case runs as an attacker would: it feeds pycapstan a hostile input, then asserts the
documented exit code, a one-line ``capstan: ...`` message, no traceback, and that nothing
outside the sandbox changed (``sandbox.assert_untouched()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from crashkit import Tmpfs, can_mount

from hostile_kit import Sandbox, snapshot


@pytest.fixture
def sandbox(tmp_path: Path, capstan_root: Path) -> Iterator[Sandbox]:
    """``outside/`` holds a 0600 ``victim`` file and a ``dir/``: the targets of escapes."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    victim = outside / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o600)
    box = Sandbox(capstan_root, outside, victim)
    box.before = snapshot(outside)
    yield box
    box.assert_untouched()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (root only) that a test fills to its end."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    fs = Tmpfs(tmp_path / "small")
    try:
        yield fs.path
    finally:
        fs.close()
