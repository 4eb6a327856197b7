"""Secrets and permissions: private state whatever the umask, no credential in any log,
scrubbed child environments, and children that die with the CLI (``run -d`` aside)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core import proc
from capstan.core.secrets import RedactingFilter, redact

from hostile_kit import Sandbox, check

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLEsessionTOKENvalue0123456789",
    "GITHUB_TOKEN": "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "DB_PASSWORD": "hunter2-correct-horse",
    "NPM_TOKEN": "npm-token-value-0123",
    "MY_SECRET": "my-secret-value-0123",
}


def states(cli) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Instance name -> [status, pid], from ``capstan instances``."""
    rows = cli("instances", "-f", "value", "-c", "Name", "-c", "Status", "-c", "PID").out
    return {r.split(" ")[0]: r.split(" ")[1:] for r in rows.splitlines()}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _umask0() -> None:
    os.umask(0)


def _walk(top: Path) -> list[Path]:
    return [top / d / n for d, dirs, files in os.walk(top) for n in dirs + files]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int, comm: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and name == comm:
                found.append(int(entry.name))
    return found


# -- permissions ----------------------------------------------------------------------


def test_state_is_private_under_umask_000(cli, sandbox: Sandbox, image: Path) -> None:
    done = cli.program("run", "-d", "-i", image, "--execute=--env=DB_PASSWORD=x /x @hold",
                       "perm", preexec_fn=_umask0)
    assert done.returncode == 0, done.stderr
    assert states(cli)["perm"][0] == "running"  # run -d outlives the CLI
    home = sandbox.root / "instances" / "qemu" / "perm"
    for path in _walk(sandbox.root):
        assert not _mode(path) & 0o022, f"{path} is writable by others"
    assert _mode(home) == 0o700
    for name in ("instance.json", "osv.config", "disk.qcow2", "console.log", "qemu.log"):
        assert _mode(home / name) == 0o600, name
    record = json.loads((home / "instance.json").read_text())
    for sock in (Path(record["qmp"]), Path(record["console"])):
        assert stat.S_ISSOCK(sock.lstat().st_mode) and _mode(sock) == 0o600
        assert _mode(sock.parent) == 0o700


def test_sockets_outside_a_long_root_are_private(cli, sandbox: Sandbox, image: Path,
                                                 tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    root = tmp_path / ("r" * 100)
    short = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # whatever tmp_path's length
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    runtime = short / "run"  # made by capstan
    env = {**os.environ, "CAPSTAN_ROOT": str(root), "XDG_RUNTIME_DIR": str(runtime)}
    done = cli.program("run", "-d", "-i", image, "-e", "/x @hold", "far", env=env,
                       preexec_fn=_umask0)
    assert done.returncode == 0, done.stderr
    try:
        (run,) = runtime.iterdir()
        assert _mode(runtime) == 0o700 and _mode(run) == 0o700
        assert {p.name: _mode(p) for p in run.iterdir()} == {"qmp.sock": 0o600,
                                                             "console.sock": 0o600}
    finally:
        assert cli.program("delete", "far", env=env).returncode == 0
    assert not any(runtime.iterdir())


def test_a_socket_directory_of_another_user_is_refused(cli, sandbox: Sandbox, image: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       request: pytest.FixtureRequest) -> None:
    root = tmp_path / ("r" * 100)
    runtime = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))  # whatever tmp_path's length
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    monkeypatch.setenv("CAPSTAN_ROOT", str(root))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    planted = runtime / hashlib.sha1(str(root / "instances" / "qemu" / "x").encode()
                                     ).hexdigest()[:16]
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)  # nobody made it first
    check(cli("run", "-d", "-i", image, "-e", "/x @hold", "x"), 74, "not a directory of this")
    shutil.rmtree(planted, ignore_errors=True)  # the failed run may have removed it
    planted.symlink_to(sandbox.outside)
    check(cli("run", "-d", "-i", image, "-e", "/x @hold", "x"), 74, "not a directory of this")
    assert states(cli).get("x", ["absent"])[0] != "running"


# -- environment ----------------------------------------------------------------------


def test_qemu_gets_a_scrubbed_environment(cli, sandbox: Sandbox, image: Path) -> None:
    env = {**os.environ, **SECRETS, "CAPSTAN_CHILD_ENV": "GITHUB_TOKEN,KEEP_ME",
           "KEEP_ME": "1"}
    done = cli.program("run", "-d", "-i", image, "-e", "/x @hold", "envy", env=env)
    assert done.returncode == 0, done.stderr
    pid = int(states(cli)["envy"][1])
    seen = dict(line.split("=", 1) for line in
                Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if line)
    assert not SECRETS.keys() & seen.keys()
    assert not any(v in "".join(seen.values()) for v in SECRETS.values())
    assert seen["PATH"] == os.environ["PATH"] and seen["KEEP_ME"] == "1"
    assert not any(k.startswith("AWS_") or k.startswith("CAPSTAN_") for k in seen)


def test_tools_get_a_scrubbed_environment(cli, sandbox: Sandbox, image: Path,
                                          tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    dump = tmp_path / "qemu-img.env"
    (tools / "qemu-img").write_text(f"#!/bin/sh\nenv >> {dump}\n"
                                    f'exec {shutil.which("qemu-img")} "$@"\n')
    (tools / "qemu-img").chmod(0o755)
    env = {**os.environ, **SECRETS, "PATH": f"{tools}:{os.environ['PATH']}"}
    done = cli.program("image", "convert", image, tmp_path / "out.vmdk", "--disk-format",
                       "vmdk", env=env)
    assert done.returncode == 0, done.stderr
    seen = dump.read_text()
    assert "PATH=" in seen
    assert not any(f"{k}=" in seen or v in seen for k, v in SECRETS.items())


def test_child_env_never_passes_secret_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("CAPSTAN_CHILD_ENV", ",".join([*SECRETS, "LC_ALL"]))
    env = proc.child_env(keep=["AWS_SESSION_TOKEN"])
    assert not env.keys() & SECRETS.keys() and env["LC_ALL"] == "C"
    assert set(env) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "TZ", "USER",
                        "LOGNAME", "LC_ALL"} | {k for k in os.environ if k.startswith("LC_")}


# -- logs -----------------------------------------------------------------------------


def test_vv_logs_of_s3_traffic_hold_no_credential(cli, sandbox: Sandbox, s3: str,
                                                  tmp_path: Path) -> None:
    pkg = tmp_path / "osv.tool.mpm"
    pkg.write_bytes(b"not really a package")
    pkg.with_suffix(".yaml").write_text("name: osv.tool\n")
    log = tmp_path / "capstan.log"
    env = {**os.environ, **SECRETS, "CAPSTAN_REPOSITORIES": f"s3://{s3}"}
    done = cli.program("-vv", "--log-file", log, "package", "push", pkg, f"s3://{s3}",
                       env=env)
    assert done.returncode == 0, done.stderr
    pulled = cli.program("-vv", "--log-file", log, "package", "pull", "osv.tool", env=env)
    assert pulled.returncode == 0, pulled.stderr
    for text in (done.stderr, pulled.stderr, log.read_text()):
        assert "botocore" in text and "X-Amz-Security-Token" in text  # the debug log ran
        leaked = [k for k, v in SECRETS.items() if v in text]
        assert not leaked, leaked
        assert "'Authorization': b'***'" in text


def test_a_failing_s3_command_logs_no_credential(cli, sandbox: Sandbox, aws_env: str) -> None:
    env = {**os.environ, **SECRETS, "CAPSTAN_REPOSITORIES": "s3://no-such-bucket-here"}
    done = cli.program("-vv", "--debug", "package", "pull", "osv.none", env=env)
    assert done.returncode == 75, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("capstan: ")
    assert not [k for k, v in SECRETS.items() if v in done.stderr]


@pytest.mark.parametrize("line", [
    "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential={AKID}/20261206/us-east-1/s3/"
    "aws4_request, SignedHeaders=host, Signature=0bcf0dfb'}",
    "x-amz-security-token:{TOKEN}",
    "GET https://b.s3.amazonaws.com/k?X-Amz-Credential={AKID}%2F2026&X-Amz-Security-Token="
    "{TOKEN}&X-Amz-Signature=abc",
    "Authorization: Bearer {GH}",
    "Authorization: token {GH}",
    "run: ['qemu-img', '--env=DB_PASSWORD={PW} /app']",
    "cmdline=[--rootfs=rofs --env=MY_API_KEY?={PW} runscript /run/default;]",
    "{'aws_secret_access_key': '{SECRET}', 'aws_session_token': \"{TOKEN}\"}",
    "github_token: {GH}",
    "cloning https://user:{PW}@example.com/repo.git",
    "the key {AKID} was refused",
])
def test_redact_removes_credentials(line: str) -> None:
    values = {"AKID": SECRETS["AWS_ACCESS_KEY_ID"], "TOKEN": SECRETS["AWS_SESSION_TOKEN"],
              "GH": SECRETS["GITHUB_TOKEN"], "PW": SECRETS["DB_PASSWORD"],
              "SECRET": SECRETS["AWS_SECRET_ACCESS_KEY"]}
    text = line
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    clean = redact(text, environ={})
    assert not [k for k, v in values.items() if v in clean], clean
    assert "***" in clean


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"[A-Z][A-Z_]{0,8}(PASSWORD|SECRET|TOKEN|API_KEY)", fullmatch=True),
       value=st.from_regex(r"[A-Za-z0-9/+=._-]{1,40}", fullmatch=True),
       prefix=st.sampled_from(["--env=", "", "export ", "env: "]))
def test_secret_assignments_never_survive(name: str, value: str, prefix: str) -> None:
    clean = redact(f"run {prefix}{name}={value} /app", environ={})
    assert f"{name}=***" in clean and f"={value} " not in clean


def test_the_filter_redacts_arguments_and_tracebacks() -> None:
    token = SECRETS["AWS_SESSION_TOKEN"]
    try:
        raise RuntimeError(f"X-Amz-Security-Token={token}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "sent %s", (
            {"X-Amz-Security-Token": token},), sys.exc_info())
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert token not in text and "X-Amz-Security-Token" in text


# -- children die with the CLI --------------------------------------------------------


@pytest.mark.functional
@pytest.mark.qemu
def test_kill_9_during_qemu_img_convert_leaves_no_child(sandbox: Sandbox, image: Path,
                                                         tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    real = shutil.which("qemu-img")
    (tools / "qemu-img").write_text(  # the real convert, slowed to 1 KiB/s
        f'#!/bin/sh\n[ "$1" = convert ] && shift && exec {real} convert -r 1024 "$@"\n'
        f'exec {real} "$@"\n')
    (tools / "qemu-img").chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    cli = subprocess.Popen([sys.executable, "-m", "capstan", "image", "convert", str(image),
                            str(tmp_path / "out.vdi"), "--disk-format", "vdi"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found: list[int] = []
    wait_for(lambda: bool(found.extend(_children(cli.pid, "qemu-img")) or found), 60,
             "qemu-img convert to start")
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    wait_for(lambda: not _alive(found[0]), 30, "qemu-img to die with the CLI")
    assert not (tmp_path / "out.vdi").exists()


@pytest.mark.functional
@pytest.mark.qemu
def test_kill_9_of_a_foreground_run_stops_qemu(cli, sandbox: Sandbox, image: Path) -> None:
    run = subprocess.Popen([sys.executable, "-m", "capstan", "run", "-i", str(image), "-e",
                            "/x @deaf", "fg"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    wait_for(lambda: states(cli).get("fg", [""])[0] == "running", 60, "the guest to start")
    pid = int(states(cli)["fg"][1])
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    wait_for(lambda: not _alive(pid), 30, "QEMU to die with the CLI")
    assert states(cli)["fg"][0] == "stopped"


def test_a_program_path_that_is_not_executable_is_tool_missing(tmp_path: Path) -> None:
    from capstan.core import proc
    from capstan.core.errors import ToolMissing

    with pytest.raises(ToolMissing, match="not an executable program"):
        proc.run([str(tmp_path / "no-such-qemu"), "--version"])


def test_redaction_is_linear_on_long_names() -> None:
    """A hostile string (e.g. from a damaged cache, logged in a warning) cannot stall the CLI."""
    from capstan.core.secrets import redact

    assert redact("a" * 200_000 + "token") == "a" * 200_000 + "token"  # took minutes before
    assert redact("x" * 50 + "_PASSWORD=hunter2") == "x" * 50 + "_PASSWORD=***"
