"""Compose a 200 MB tree of ~5,000 files to qcow2, against cp -r + qemu-img convert.

Both sides run in this one process, alternately, five times each, each after a sync; the medians
are compared. Prints the time ratio (target <= 1.3) and the image overhead:
the qcow2's allocated bytes minus the tree's bytes minus the loader's bytes
(target <= 1 MiB).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from capstan.image import compose, loader, tree
from capstan.image.formats import DiskFormat

FILES = 5000
TOTAL = 200 * 1024 * 1024


def make_tree(root: Path) -> int:
    rng = random.Random(42)
    weights = [rng.paretovariate(1.2) for _ in range(FILES)]
    scale = TOTAL / sum(weights)
    total = 0
    for n, w in enumerate(weights):
        d = root / f"d{n % 50:02d}" / f"s{n % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = max(1, int(w * scale))
        (d / f"f{n:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    os.sync()  # start each run with no dirty pages left by the previous one
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        src = work / "tree"
        tree_bytes = make_tree(src)
        ld = loader.read_loader(loader.probe_loader_path())
        entries_of = lambda: tree.with_base(tree.collect(src))  # noqa: E731
        raw = work / "same-bytes.raw"
        compose.compose(entries_of(), ld, raw, "/x", DiskFormat.RAW)

        def ours() -> None:
            compose.compose(entries_of(), ld, work / "ours.qcow2", "/x", DiskFormat.QCOW2)

        def baseline() -> None:
            shutil.rmtree(work / "copy", ignore_errors=True)
            subprocess.run(["cp", "-r", str(src), str(work / "copy")], check=True)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                            str(work / "base.qcow2")], check=True)

        ours_t, base_t = [], []
        for _ in range(5):
            ours_t.append(timed(ours))
            base_t.append(timed(baseline))
        image = work / "ours.qcow2"
        allocated = image.stat().st_blocks * 512
        overhead = allocated - tree_bytes - ld.size
        ratio = statistics.median(ours_t) / statistics.median(base_t)
        print(f"tree: {FILES} files, {tree_bytes} bytes")
        print(f"compose to qcow2: median {statistics.median(ours_t):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in ours_t)})")
        print(f"cp -r + qemu-img convert: median {statistics.median(base_t):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in base_t)})")
        print(f"ratio: {ratio:.2f} (target <= 1.3)")
        print(f"image overhead: {overhead} bytes ({overhead / 2**20:.2f} MiB; target <= 1 MiB)")
        padding = sum(-p.stat().st_size % 512 for p in src.rglob("*.bin"))
        print(f"  of which ROFS per-file padding to 512-byte blocks (required by the "
              f"format): {padding} bytes; the rest: {overhead - padding} bytes "
              f"({(overhead - padding) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
