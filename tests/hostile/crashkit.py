"""Helpers of the crash and race cases: the CLI as a killable program, a bucket
remote on the test server, a small tmpfs, and checks that a name still works."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repo_server import RepoServer

PROBE_HOLD = "/hello @hold"  # the probe guest keeps running until stopped


@dataclass
class Result:
    code: int
    out: str
    err: str


def states(cli: Any) -> dict[str, list[str]]:
    """Instance name -> [status, pid], from ``capstan instances``."""
    rows = cli("instances", "-f", "value", "-c", "Name", "-c", "Status", "-c", "PID"
               ).out.splitlines()
    return {r.split(" ")[0]: r.split(" ")[1:] for r in rows}


def spawn(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``capstan ARGS`` as a program that a test can kill."""
    return subprocess.Popen([sys.executable, "-m", "capstan", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def kill9(child: subprocess.Popen[str]) -> None:
    """SIGKILL *child* and reap it."""
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL


def when(predicate: Callable[[], bool], child: subprocess.Popen[str],
         timeout: float = 60) -> None:
    """Poll (1 ms) until *predicate* holds; fail if *child* ended first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the awaited point never came"
        time.sleep(0.001)


def bucket(server: RepoServer, name: str, image: bytes, index: bytes | None = None) -> str:
    """Publish image *name* (gzipped, with its digest and ``index.yaml``) in the
    server's bucket; the published digest (of the gzip bytes)."""
    base = name.rsplit("/", 1)[-1]
    data = gzip.compress(image, mtime=0)
    server.state.bucket[f"{name}/{base}.qemu.gz"] = data
    server.state.bucket[f"{name}/{base}.qemu.gz.sha256"] = \
        f"{hashlib.sha256(data).hexdigest()}  {base}.qemu.gz\n".encode()
    meta = index or b"format_version: '1'\nversion: v1\ndescription: test image\n"
    server.state.bucket[f"{name}/index.yaml"] = meta
    server.state.bucket[f"{name}/index.yaml.sha256"] = \
        f"{hashlib.sha256(meta).hexdigest()}  index.yaml\n".encode()
    return hashlib.sha256(data).hexdigest()


def publish_package(server: RepoServer, name: str, archive: bytes) -> None:
    """Publish package *name* (manifest and archive, with digests) in the bucket."""
    manifest = f"name: {name}\n".encode()
    for key, data in ((f"packages/{name}.yaml", manifest), (f"packages/{name}.mpm", archive)):
        server.state.bucket[key] = data
        server.state.bucket[f"{key}.sha256"] = f"{hashlib.sha256(data).hexdigest()}\n".encode()


def temporaries(top: Path) -> list[Path]:
    """Temporary files or directories left anywhere below *top*."""
    return [p for p in top.rglob("*") if p.name.startswith(".capstan-tmp.")]


class Tmpfs:
    """A small tmpfs mounted on *path* (unmounted by :meth:`close`)."""

    def __init__(self, path: Path, size: str = "2m") -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], check=True)
        self.path = path

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


def can_mount() -> bool:
    """Whether this host lets the tests mount a tmpfs (root, no seccomp veto)."""
    return os.geteuid() == 0


def result(child: subprocess.Popen[str] | subprocess.CompletedProcess[str]) -> Result:
    """The outcome of a program run, as ``check`` reads it."""
    if isinstance(child, subprocess.Popen):
        out, err = child.communicate(timeout=300)
        return Result(int(child.returncode), out, err)
    return Result(child.returncode, child.stdout, child.stderr)
