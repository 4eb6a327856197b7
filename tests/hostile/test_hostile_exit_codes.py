"""Exit codes follow the README's table everywhere: each code of the table is triggered by
a real command, and every failure is one ``capstan: `` line without a traceback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    """What a command did (as the ``cli`` fixture reports it)."""

    code: int
    out: str
    err: str
    raw: bytes = b""


def readme_codes() -> dict[int, str]:
    """Code -> meaning, from the table of the README's "Exit codes" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2].strip() for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section,
                                                          re.MULTILINE)}


class FailingServer:
    """An HTTP repository: a bucket listing of *keys*, each answered with HTTP 503."""

    def __init__(self, keys: list[str], hang: bool = False) -> None:
        self.connected = threading.Event()
        listing = "".join(f"<Contents><Key>{k}</Key></Contents>" for k in keys)
        body = (f"<ListBucketResult><IsTruncated>false</IsTruncated>{listing}"
                "</ListBucketResult>").encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.connected.set()
                if hang:
                    threading.Event().wait(120)
                    return
                ok = self.path.split("?")[0] == "/" and bool(keys)
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", str(len(body) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> FailingServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def program(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """``capstan ARGS`` as a separate program, in the environment plus *env*."""
    done = subprocess.run([sys.executable, "-m", "capstan", *map(str, args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    return Result(done.returncode, done.stdout, done.stderr)


def shim(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which ``import <module>`` fails, as when it is not installed."""
    folder = tmp_path / "shim"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    return {"PYTHONPATH": str(folder)}


def interrupted(tmp_path: Path) -> Result:
    """``pull`` from a remote that never answers, then Ctrl-C."""
    with FailingServer([], hang=True) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "capstan", "pull", "a/b"],
                                env={**os.environ, "CAPSTAN_REPOSITORIES": srv.url},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not srv.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    return Result(proc.returncode, out, err)


def broken_pipe() -> Result:
    proc = subprocess.Popen([sys.executable, "-m", "capstan", "doctor", "-f", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that has read enough
    err = proc.stderr.read()
    return Result(proc.wait(timeout=60), "", err)


@pytest.fixture
def cases(cli: Callable[..., Result], image: Path, tmp_path: Path, sandbox: Sandbox,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, Callable[[], Result]]]:
    """One real command per documented exit code."""

    def internal() -> Result:
        def bug(*_args: object) -> None:
            raise ZeroDivisionError("a bug\nsecond line")

        monkeypatch.setattr("capstan.services.repository.list_images", bug)
        return cli("images")

    def config_type() -> Result:
        (sandbox.root / "config.yaml").write_text("disable_kvm: [1, 2]\n")
        try:
            return cli("images")
        finally:
            (sandbox.root / "config.yaml").unlink()

    def remote_5xx() -> Result:
        with FailingServer(["a/b/b.qemu", "a/b/b.qemu.sha256"]) as srv:
            monkeypatch.setenv("CAPSTAN_REPOSITORIES", srv.url)
            return cli("pull", "a/b")

    yield {
        0: lambda: cli("images"),
        64: lambda: cli("pull", "../outside"),
        65: lambda: cli("package", "describe", "no-such-package"),
        69: lambda: program("run", "-p", "libvirt", "-i", image, "lv",
                            env=shim(tmp_path, "libvirt")),
        70: internal,
        74: lambda: cli("compose", "-c", "/x", "-l", "probe-loader", "-o", "/proc/x.qcow2",
                        sandbox.outside),
        75: remote_5xx,
        78: config_type,
        124: lambda: cli("run", "-i", image, "-e", "/x @hold", "--timeout", "2", "--rm", "t"),
        130: lambda: interrupted(tmp_path),
        134: lambda: cli("run", "-i", image, "-e", "/x Aborted", "--rm", "crash"),
        141: broken_pipe,
    }


EXPECTED_TEXT = {64: "invalid image name", 65: "no-such-package", 69: "pycapstan[libvirt]",
                 70: "internal error: a bug second line", 74: "/proc", 75: "503",
                 78: "disable_kvm must be true or false", 124: "did not finish",
                 130: "interrupted", 134: "crashed"}


def test_every_code_of_the_readme_table(cases: dict[int, Callable[[], Result]]) -> None:
    table = readme_codes()
    assert set(table) == set(cases), "the README's table and the cases disagree"
    for code in sorted(table):
        result = cases[code]()
        if code in (0, 141):
            assert result.code == code and "Traceback" not in result.err, (code, result)
            assert code == 0 or result.err == "", result
        else:
            check(result, code, EXPECTED_TEXT[code])


def test_the_error_classes_document_the_same_codes() -> None:
    from capstan.core import errors

    documented = set(readme_codes())
    for name in errors.__all__:
        assert getattr(errors, name).exit_code in documented, name


# -- section 8 -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "argv"), [
    ("hypervisor: 123\n", ("instances",)),
    ("hypervisor: [qemu]\n", ("instances",)),
    ("qemu_aio_type: {a: 1}\n", ("instances",)),  # a driver's key: checked as it loads
    ("disable_kvm: maybe\n", ("images",)),
    ("repositories: 5\ngithub_repo: [a]\n", ("search",)),
    ("- not\n- a mapping\n", ("images",)),
])
def test_wrong_types_in_config_yaml_are_78(cli, sandbox: Sandbox, text: str,
                                           argv: tuple[str, ...]) -> None:
    (sandbox.root / "config.yaml").write_text(text)
    check(cli(*argv), 78, "")


def test_5xx_on_a_digest_is_75_too(cli, sandbox: Sandbox,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with FailingServer(["packages/p.yaml", "packages/p.mpm", "packages/p.mpm.sha256"]) as srv:
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", srv.url)
        check(cli("package", "pull", "p"), 75, "")
    assert not (sandbox.root / "packages" / "p.mpm").exists()


@pytest.mark.parametrize(("module", "argv", "extra"), [
    ("libvirt", ("instances", "-p", "libvirt"), "libvirt"),
    ("boto3", ("images", "-p", "aws"), "aws"),
    ("pyVmomi", ("instances", "-p", "vsphere"), "vsphere"),
])
def test_missing_backend_library_names_the_extra(tmp_path: Path, sandbox: Sandbox,
                                                 module: str, argv: tuple[str, ...],
                                                 extra: str) -> None:
    env = {**shim(tmp_path, module), "CAPSTAN_VSPHERE_URL": "https://127.0.0.1:1/sdk",
           "AWS_DEFAULT_REGION": "us-east-1"}
    check(program(*argv, env=env), 69, f"pip install 'pycapstan[{extra}]'")


def test_the_all_extra_installs_every_backend() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    backends = {dep for name in ("libvirt", "aws", "vsphere", "gce", "openstack")
                for dep in extras[name]}
    assert backends <= set(extras["all"])


def test_fleet_values_are_input_errors(cli, sandbox: Sandbox, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "capstan-fleet.yaml").write_text(
        "services:\n  a: {image: probe-loader, env: ['1BAD']}\n")
    check(cli("up", "--dry-run"), 65, "invalid --env")


@pytest.mark.parametrize("ports", [
    "  a: {image: x, ports: ['8080:80']}\n  b: {image: x, ports: ['8080:81']}\n",
    "  a: {image: x, count: 2, ports: ['9000:80']}\n",
    "  a: {image: x, ports: ['127.0.0.1:53:53/udp', '53:54/udp']}\n",
    "  a: {image: x, ports: ['0.0.0.0:8080:80']}\n  b: {image: x, ports: ['8080:80']}\n",
])
def test_fleet_file_with_a_host_port_twice_is_refused(cli, sandbox: Sandbox, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      ports: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "capstan-fleet.yaml").write_text(f"services:\n{ports}")
    check(cli("up", "--dry-run"), 65, "host port")


def test_distinct_or_free_host_ports_are_fine(tmp_path: Path) -> None:
    from capstan.services.fleet import load_fleet

    path = tmp_path / "capstan-fleet.yaml"
    path.write_text("services:\n  a: {image: x, count: 3, ports: ['0:80']}\n"
                    "  b: {image: x, ports: ['8080:80', '8080:80/udp', '127.0.0.2:8080:80']}\n"
                    "  c: {image: x, count: 0, ports: ['8080:80']}\n")
    assert [s.name for s in load_fleet(path).services] == ["a", "b", "c"]


def test_init_writes_a_capstanfile_build_accepts(cli, sandbox: Sandbox, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "hello-app"
    project.mkdir()
    monkeypatch.chdir(project)
    assert cli("init").code == 0
    (project / "hello").write_bytes(b"\x7fELF hello")
    assert cli("base", "import", probe_loader_path(), "--name", "osv-loader").code == 0
    result = cli("build", "-f", "value", "-c", "Command line")
    assert result.code == 0 and result.out.strip().endswith("/hello"), result
    assert cli("image", "cat", "hello-app", "/hello").raw == b"\x7fELF hello"


@pytest.mark.parametrize("argv", [("a\nb",), ("pull", "--bogus\nline"),
                                  ("run", "-m", "1\n2G", "-i", "probe-loader", "--dry-run")])
def test_errors_quoting_the_input_stay_on_one_line(cli, sandbox: Sandbox,
                                                   argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.code == 64 and result.err.count("\n") == 1, result
    assert result.err.startswith("capstan: ")


def test_no_socket_left_listening() -> None:
    """The failing servers above are gone (nothing left on the host)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


def test_a_deleted_current_directory_is_named(app_tree: Path, tmp_path: Path,
                                             sandbox: Sandbox) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    argv = [sys.executable, "-m", "capstan", "compose", "-l", "probe-loader", "-c", "/hello",
            "-o", "out.qcow2", str(app_tree)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=gone, check=False,
                          preexec_fn=lambda: os.rmdir(gone))
    check(Result(done.returncode, done.stdout, done.stderr), 74,
          "the current directory no longer exists")
