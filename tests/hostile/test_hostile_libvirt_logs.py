"""Hostile remote libvirt logs: URIs that smuggle ssh options or credentials, key files with
shell characters, and what a hostile host plants at the log path (a symbolic link out, a
hard link, a FIFO, a huge file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from test_libvirt import libvirtd, lv, pool, remote_log, ssh_uri  # noqa: F401 - fixtures

from capstan.drivers.libvirt_logs import LOG_LIMIT

from conftest import Result, wait_for
from hostile_kit import Sandbox, check


def _program(done: subprocess.CompletedProcess[str]) -> Result:
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(("uri", "code", "message"), [
    ("qemu+ssh://-oProxyCommand=touch%20{out}%2Fpwned/system", 78,
     "the host must be a host name or address"),
    ("qemu+ssh://-oProxyCommand=touch%20{out}%2Fpwned@h/system", 78,
     "the user must be a user name"),
    ("qemu+ssh://h/system?keyfile=-oProxyCommand=touch%20{out}%2Fpwned", 78,
     "keyfile must be a file name"),
    ("qemu+ssh://h/system?known_hosts=-oProxyCommand=x", 78, "known_hosts must be a file"),
    ('qemu+ssh://h/system?known_hosts=/a%22%20-oProxyCommand=x', 78,
     "known_hosts must not contain quotes"),
    ("qemu+ssh://h/system?keyfile=/k%0a-oProxyCommand=x", 78, "keyfile must be a file name"),
    ("qemu+ssh://h/system?command=/bin/sh", 78, "command= (another ssh program)"),
    ("qemu+ssh://root:hunter2-do-not-show@h/system", 78, "a password in the URI is refused"),
    ("qemu+ssh://h:99999/system", 78, "not a valid URI"),
    ("qemu+tcp://h/system", 69, "without an SSH transport"),
    ("qemu+ssh://h/session", 69, "keep no console log"),
])
def test_hostile_uris_run_no_ssh(cli, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                 uri: str, code: int, message: str) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", uri.format(out=quote(str(sandbox.outside), safe="")))
    for args in (("logs", "x"), ("logs", "-f", "x")):
        result = cli(*args, "-p", "libvirt")
        check(result, code, message)
        assert "hunter2" not in result.err
    assert not (sandbox.outside / "pwned").exists()


@pytest.fixture
def remote(cli, image: Path, pool: str, ssh_uri: str,  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A remote instance that has booted and powered off, and its log on the host; the
    log path is restored to nothing after."""
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", ssh_uri)
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    name = f"lvh-{uuid.uuid4().hex[:6]}"
    done = cli.program("run", "-i", image, "-e", "/hostile-log", name)
    assert done.returncode == 0, done.stderr
    log = remote_log(name)
    yield name, log
    assert cli("delete", name).code == 0
    assert not log.exists() and not log.is_symlink()


@pytest.mark.libvirt
def test_key_file_with_shell_characters_is_one_argument(cli, remote: tuple[str, Path],
                                                        sandbox: Sandbox, ssh_uri: str,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = remote
    odd = sandbox.root.parent / "k e'y\";$(touch pwned);`touch pwned`"
    odd.mkdir()
    key = ssh_uri.split("keyfile=")[1].split("&")[0]
    shutil.copy(key, odd / "client")
    (odd / "client").chmod(0o600)
    uri = ssh_uri.replace(key, quote(str(odd / "client"), safe="/"))
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", uri)
    shown = cli.program("logs", name, cwd=sandbox.root.parent)
    assert shown.returncode == 0, shown.stderr
    assert "PROBE cmdline=[--rootfs=rofs /hostile-log]" in shown.stdout
    assert not (sandbox.root.parent / "pwned").exists()


@pytest.mark.libvirt
def test_planted_log_files_are_refused(cli, remote: tuple[str, Path],
                                       sandbox: Sandbox) -> None:
    name, log = remote
    spare = log.with_name(f"{log.name}.spare")

    def plant_symlink() -> None:
        log.symlink_to(sandbox.victim)

    def plant_hard_link() -> None:
        spare.write_bytes(b"precious\n")
        os.link(spare, log)

    plants = [(plant_symlink, "is a symbolic link: refused"),
              (plant_hard_link, "has other hard links: refused"),
              (lambda: os.mkfifo(log), "is not a regular file: refused")]
    try:
        for plant, message in plants:
            log.unlink(missing_ok=True)
            plant()
            for args in (("logs", name), ("logs", "-f", name)):
                done = cli.program(*args)
                check(_program(done), 69, message)
                assert "precious" not in done.stdout
    finally:
        log.unlink(missing_ok=True)
        spare.unlink(missing_ok=True)


@pytest.mark.libvirt
def test_a_huge_log_is_read_to_its_last_bytes_only(cli, remote: tuple[str, Path]) -> None:
    name, log = remote
    with open(log, "r+b") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB that cost nothing
        f.seek(-6, os.SEEK_END)
        f.write(b"\nlast\n")
    shown = subprocess.run([sys.executable, "-m", "capstan", "logs", name],
                           capture_output=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout) == LOG_LIMIT and shown.stdout.endswith(b"\nlast\n")


FLEET = """\
name: {name}
hosts:
  here: {{driver: qemu}}
  there: {{driver: libvirt, libvirt_uri: "${{HL_URI}}", libvirt_pool: {pool}}}
services:
  a: {{image: app.qcow2, host: here, command: /a @hold, memory: 128M}}
  b: {{image: app.qcow2, host: there, command: /b @hold, memory: 128M}}
"""


@pytest.mark.libvirt
@pytest.mark.qemu
def test_one_hosts_planted_log_does_not_hide_the_others(cli, image: Path, pool: str,  # noqa: F811
                                                        ssh_uri: str, sandbox: Sandbox,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"hl{uuid.uuid4().hex[:6]}"
    work = sandbox.root.parent / "fleet"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(FLEET.format(name=name, pool=pool))
    monkeypatch.setenv("HL_URI", ssh_uri)
    monkeypatch.delenv("CAPSTAN_HYPERVISOR")
    monkeypatch.chdir(work)
    log = remote_log(f"{name}-b-1")
    try:
        assert cli("up").code == 0
        wait_for(lambda: "PROBE done" in log.read_text(errors="replace"), 60, "b's probe")
        log.unlink()
        log.symlink_to(sandbox.victim)
        shown: list[subprocess.CompletedProcess[str]] = []

        def a_logged() -> bool:
            shown.append(cli.program("fleet", "logs"))
            return f"{name}-a-1 | PROBE done" in shown[-1].stdout

        wait_for(a_logged, 60, "a's log")
        check(_program(shown[-1]), 69, "host there: ")
        assert "is a symbolic link: refused" in shown[-1].stderr
        assert "precious" not in shown[-1].stdout and f"{name}-b-1" not in shown[-1].stdout
    finally:
        assert cli("down", "-t", "2").code == 0
    assert not log.exists() and not log.is_symlink()
