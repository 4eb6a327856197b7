"""What the benchmarks share: running capstan, a probe image, local ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CAPSTAN = [sys.executable, "-m", "capstan"]  # what the console script runs


def capstan_env(root: Path, **settings: str) -> dict[str, str]:
    """The environment for timed capstan runs: root and settings, and bytecode caching on
    (an installed tool has its .pyc files; PYTHONDONTWRITEBYTECODE would time compiling)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "CAPSTAN_ROOT": str(root), **settings}


def probe_image(work: Path, env: dict[str, str]) -> Path:
    """``work/app.qcow2``: a tiny app (``/run/default`` = ``/hello``) on the probe loader."""
    app = work / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "default").write_text("/hello")
    image = work / "app.qcow2"
    subprocess.run([*CAPSTAN, "compose", "-l", "probe-loader", "-o", str(image), str(app)],
                   env=env, check=True, capture_output=True)
    return image


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    """Return once something accepts connections on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


