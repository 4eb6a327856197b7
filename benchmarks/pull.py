"""Download throughput of `capstan pull` relative to `curl` of the same file.

A 512 MiB image is served from a local HTTP server (a separate process, with an
S3-style listing at the root) and fetched alternately by curl and by
`capstan --s3 pull`, five times each in this one run, on tmpfs. The server sends with
sendfile(2), as nginx does, so that it takes as little of the shared CPU as a remote
server would. capstan's time includes its start-up, the listing, SHA-256 of every byte
(on a worker thread, overlapping the transfer), fsync and the rename.

Target: curl time / capstan time >= 0.9. Because capstan verifies what it downloads, the
like-for-like reference is also printed: curl followed by `openssl dgst -sha256`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import CAPSTAN, capstan_env, free_port, wait_for_port

SIZE = 512 << 20
SERVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
        def copyfile(self, source, outputfile):
            outputfile.flush()
            self.connection.sendfile(source)
        def do_GET(self):
            if self.path.startswith("/?") or self.path == "/":
                body = (b'<ListBucketResult><IsTruncated>false</IsTruncated>'
                        b'<Contents><Key>bench/big/index.yaml</Key></Contents>'
                        b'<Contents><Key>bench/big/big.qemu</Key></Contents>'
                        b'</ListBucketResult>')
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
    srv.serve_forever()
""")


def main() -> None:
    # tmpfs when there is one: the disk's write-back noise would swamp both sides
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="capstan-bench-", dir=shm) as tmp:
        work = Path(tmp)
        served = work / "served" / "bench" / "big"
        served.mkdir(parents=True)
        with open(served / "big.qemu", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(SIZE >> 20):
                f.write(block)
        (served / "index.yaml").write_text("format_version: '1'\n")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                                  cwd=work / "served")
        url = f"http://127.0.0.1:{port}/"
        env = capstan_env(work / "root", CAPSTAN_REPO_URL=url)
        try:
            wait_for_port(port)
            curl, verified, ours = [], [], []
            for _ in range(5):
                start = time.perf_counter()
                subprocess.run(["curl", "-sf", "-o", str(work / "curl.out"),
                                f"{url}bench/big/big.qemu"], check=True)
                curl.append(time.perf_counter() - start)
                subprocess.run(["openssl", "dgst", "-sha256", str(work / "curl.out")],
                               check=True, capture_output=True)
                verified.append(time.perf_counter() - start)
                (work / "curl.out").unlink()
                start = time.perf_counter()
                subprocess.run([*CAPSTAN, "--s3", "pull", "bench/big"], env=env, check=True,
                               capture_output=True)
                ours.append(time.perf_counter() - start)
                shutil.rmtree(work / "root" / "repository")
        finally:
            server.terminate()
            server.wait()
        c, v, o = (statistics.median(t) for t in (curl, verified, ours))
        print(f"curl:                 median {c:.2f} s ({SIZE / c / 2**20:.0f} MiB/s)")
        print(f"curl + openssl sha256: median {v:.2f} s ({SIZE / v / 2**20:.0f} MiB/s)")
        print(f"capstan pull:         median {o:.2f} s ({SIZE / o / 2**20:.0f} MiB/s)")
        print(f"throughput ratio: {c / o:.2f} (target >= 0.9); "
              f"against curl + sha256: {v / o:.2f}")


if __name__ == "__main__":
    main()
