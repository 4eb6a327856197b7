"""Bytes an AMI upload sends, relative to the image's non-zero bytes, against moto_server.

A 1 GiB image (probe loader + a 64 MiB, 200-file tree) is uploaded through EBS
direct. "Non-zero bytes" counts the image's non-zero 4 KiB pages, so a ratio of
1.0 means not one zero page crossed the network. Target: <= 1.05. Also prints
the upload time (against the simulator, so only a relative figure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CAPSTAN, capstan_env, free_port, wait_for_port

PAGE = 4096


def nonzero_bytes(raw: Path) -> int:
    zero = bytes(PAGE)
    total = 0
    with open(raw, "rb") as f:
        while page := f.read(PAGE):
            total += len(page) if page != zero[:len(page)] else 0
    return total


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        work = Path(tmp)
        tree = work / "app"
        (tree / "run").mkdir(parents=True)
        (tree / "run" / "default").write_text("/app/0")
        for i in range(200):
            (tree / "app").mkdir(exist_ok=True)
            (tree / "app" / str(i)).write_bytes(os.urandom(64 * 1024 * 1024 // 200))
        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        env = capstan_env(work / "root", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                          AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        try:
            image = work / "app.qcow2"
            subprocess.run([*CAPSTAN, "compose", "-l", "probe-loader", "-s", "1G", "-o",
                            str(image), str(tree)], env=env, check=True, capture_output=True)
            raw = work / "app.raw"
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)],
                           check=True)
            wait_for_port(port)
            start = time.perf_counter()
            done = subprocess.run([*CAPSTAN, "image", "upload", str(image), "-f", "json"],
                                  env=env, check=True, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
        finally:
            moto.terminate()
            moto.wait()
        sent = json.loads(done.stdout)["Bytes sent"]
        useful = nonzero_bytes(raw)
        print(f"image: {raw.stat().st_size >> 20} MiB virtual, {useful / 2**20:.1f} MiB "
              "non-zero (4 KiB pages)")
        print(f"sent:  {sent / 2**20:.1f} MiB in {elapsed:.1f} s (moto_server)")
        print(f"bytes sent / non-zero bytes: {sent / useful:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
