"""Shared fixtures: an isolated CAPSTAN_ROOT and the CLI run in-process or as a program."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capstan.shell import CapstanApp

os.environ.setdefault("CAPSTAN_QEMU_ACCEL", "tcg")
# Every Python the tests start imports the installed capstan: `python -m` must not put the
# working directory (the repository root, whose capstan/ lacks drivers and image) first.
os.environ["PYTHONSAFEPATH"] = "1"


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw: bytes = b""


@pytest.fixture(autouse=True)
def capstan_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "capstan-root"
    root.mkdir()
    monkeypatch.setenv("CAPSTAN_ROOT", str(root))
    monkeypatch.setenv("CAPSTAN_QEMU_ACCEL", "tcg")
    yield root
    _delete_instances(root)


def _delete_instances(root: Path) -> None:
    """Stop and delete whatever a test left running (QEMU processes, socket dirs)."""
    if not (root / "instances" / "qemu").is_dir():
        return
    from capstan.core.config import load
    from capstan.drivers.base import get_driver

    driver = get_driver("qemu", load({}, {"CAPSTAN_ROOT": str(root)}))
    for inst in list(driver.list()):
        if inst.image:  # ours, not a Capstan-made directory
            driver.stop(inst.name, timeout=0.5)
            driver.delete(inst.name)


@pytest.fixture
def cli() -> Cli:
    return Cli()


class Cli:
    """Run ``capstan`` in-process, capturing its output."""

    def __call__(self, *args: str | Path) -> Result:
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
        err = io.StringIO()
        app = CapstanApp()
        app.stdout, app.stderr = out, err
        try:
            code = app.run([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        raw = out.buffer.getvalue()  # type: ignore[attr-defined]
        return Result(code, raw.decode("utf-8", "replace"), err.getvalue(), raw)

    @staticmethod
    def program(*args: str | Path, cwd: Path | None = None,
                **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run ``capstan`` as a separate program."""
        argv = [sys.executable, "-m", "capstan", *map(str, args)]  # as the console script
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                              check=False, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def app_tree(tmp_path: Path) -> Path:
    """A small application tree with a /run/default script."""
    tree = tmp_path / "app"
    (tree / "run").mkdir(parents=True)
    (tree / "lib").mkdir()
    (tree / "empty").mkdir()
    (tree / "hello").write_bytes(bytes(range(256)) * 4 + b"tail")
    (tree / "lib" / "libfoo.so").write_bytes(b"\x7fELF" + b"x" * 5000)
    (tree / "lib" / "zero").write_bytes(b"")
    (tree / "lib" / "block").write_bytes(b"B" * 512)
    (tree / "run" / "default").write_bytes(b"/hello")
    (tree / "lib" / "link").symlink_to("libfoo.so")
    return tree


@pytest.fixture
def image(cli: Cli, app_tree: Path, tmp_path: Path) -> Path:
    """The app tree composed onto the probe loader (qcow2)."""
    out = tmp_path / "app.qcow2"
    assert cli("compose", "-l", "probe-loader", "-o", out, app_tree).code == 0
    return out


def states(cli: Cli) -> dict[str, list[str]]:
    """Instance name -> [status, pid, ports], from ``capstan instances``."""
    rows = cli("instances", "-f", "value", "-c", "Name", "-c", "Status", "-c", "PID",
               "-c", "Ports").out.splitlines()
    return {r.split(" ")[0]: r.split(" ")[1:] for r in rows}


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    """Poll *predicate* until it holds; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(ready, 30, "moto_server")
    yield url
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=10)


@pytest.fixture
def aws_env(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3 pointed at moto_server with fake credentials (never real ones)."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto}/moto-api/reset", method="POST"))
    return moto


@pytest.fixture
def s3(aws_env: str) -> str:
    """A fresh bucket on moto_server."""
    import boto3

    bucket = f"capstan-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket




def expect_errors(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                  cases: list[tuple[dict[str, str], tuple[str | Path, ...], int, str]]) -> None:
    """Each (environment, argv, exit code, text) case fails with that code in one line."""
    for env, argv, code, text in cases:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            result = cli(*argv)
        assert (result.code, result.err.count("\n")) == (code, 1), (argv, result)
        assert text in result.err, (argv, result.err)


FUNCTIONAL = Path(__file__).resolve().parent / "functional"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/functional/ ``functional`` (beside its backend's marker)."""
    for item in items:
        if item.path.resolve().is_relative_to(FUNCTIONAL):
            item.add_marker(pytest.mark.functional)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true",
                     help="rewrite tests/golden/ instead of comparing (review the diff)")
