"""benchmarks/compose.py runs end to end on a tiny tree (--smoke); no timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compose.py"


def test_compose_benchmark_smoke(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # finds common.py
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--dir", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    for name in ("capstan package compose:", "capstan compose:", "cp -r + qemu-img convert:",
                 "after a 1-file change:", "hello-world package compose:", "peak RSS"):
        assert name in done.stdout
    assert not list(tmp_path.glob("capstan-bench-*"))  # its scratch is gone
