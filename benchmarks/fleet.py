"""Time for a 16-instance fleet to reach running, divided by the time for one.

Both are `capstan up` of a fleet file (probe guests that halt after their
report, private network on), measured alternately three times each in this one
run; `capstan down` runs between them, untimed. Target: ratio <= 1.5.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CAPSTAN, probe_image

FLEET = """\
name: bench{count}
services:
  node:
    image: app.qcow2
    count: {count}
    memory: 64M
    command: /node @deaf
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, CAPSTAN_ROOT=str(work / "root"), CAPSTAN_QEMU_ACCEL="tcg")
        probe_image(work, env)
        for count in (1, 16):
            (work / f"f{count}.yaml").write_text(FLEET.format(count=count))

        def up(count: int) -> float:
            fleet = ["-F", str(work / f"f{count}.yaml")]
            start = time.perf_counter()
            subprocess.run([*CAPSTAN, "up", *fleet], env=env, check=True, capture_output=True)
            elapsed = time.perf_counter() - start
            subprocess.run([*CAPSTAN, "down", "-t", "0.2", *fleet], env=env, check=True,
                           capture_output=True)
            return elapsed

        up(1)  # warm the image cache
        one, many = [], []
        for _ in range(3):
            one.append(up(1))
            many.append(up(16))
        t1, t16 = statistics.median(one), statistics.median(many)
        print(f"capstan up, 1 instance:   median {t1 * 1000:.0f} ms")
        print(f"capstan up, 16 instances: median {t16 * 1000:.0f} ms")
        print(f"ratio: {t16 / t1:.2f} (target <= 1.5) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
