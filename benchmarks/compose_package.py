"""Hello-world package compose time with a cached base, against copying the app.

A native hello package (a 1 MiB application binary and meta/ files) requiring
only osv.bootstrap is composed onto the probe loader (already in the repository)
with `capstan package compose`, and compared with `cp -r` of the package plus
`qemu-img convert` of a raw file of the same size, five times each in this run.
Prints the added time (target <= 0.3 s) and the image's overhead over the app.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CAPSTAN, capstan_env


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        work = Path(tmp)
        env = capstan_env(work / "root")
        boot = work / "bootstrap"
        (boot / "meta").mkdir(parents=True)
        (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: a\n")
        (boot / "etc").mkdir()
        (boot / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        subprocess.run([*CAPSTAN, "package", "import", "-C", str(boot)], env=env, check=True,
                       capture_output=True)
        app = work / "hello"
        (app / "meta").mkdir(parents=True)
        (app / "meta" / "package.yaml").write_text("name: hello\ntitle: h\nauthor: a\n")
        (app / "meta" / "run.yaml").write_text(
            "runtime: native\nconfig_set:\n  default:\n    bootcmd: /hello\n")
        (app / "hello").write_bytes(os.urandom(1 << 20))
        ours, base = [], []
        for n in range(5):
            out = work / f"hello{n}.qcow2"
            start = time.perf_counter()
            subprocess.run([*CAPSTAN, "package", "compose", "-C", str(app), "-l",
                            "probe-loader", "-o", str(out)], env=env, check=True,
                           capture_output=True)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            shutil.copytree(app, work / f"copy{n}")
            raw = work / f"copy{n}.raw"
            with open(raw, "wb") as f:
                f.truncate(out.stat().st_size)
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw),
                            str(work / f"copy{n}.qcow2")], check=True)
            base.append(time.perf_counter() - start)
        info = subprocess.run(["qemu-img", "info", "--output=json", str(work / "hello0.qcow2")],
                              capture_output=True, text=True, check=True).stdout
        actual = json.loads(info)["actual-size"]
        added = statistics.median(ours) - statistics.median(base)
        print(f"package compose: median {statistics.median(ours) * 1000:.0f} ms")
        print(f"cp + qemu-img convert: median {statistics.median(base) * 1000:.0f} ms")
        print(f"added: {added * 1000:.0f} ms (target <= 300 ms)")
        print(f"image overhead over the 1 MiB app: {(actual - (1 << 20)) / 2**20:.2f} MiB "
              "(loader 96 KiB, ROFS metadata, qcow2 tables)")


if __name__ == "__main__":
    main()
