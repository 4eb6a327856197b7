"""Hostile review of what landed on 2026-12-06: the direct qcow2 writer and the recompose
cache, ``import``, timestamps, listings, liveness and the microvm kernel.

Each case asserts the outcome (exit code and one ``capstan: `` line, or the fresh image's
bytes) and, through the ``sandbox`` fixture, that nothing outside the sandbox changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.image import recompose

from hostile_kit import Sandbox, check
from recompose_kit import change, compose


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)  # every change below sets a new mtime


def app(tmp_path: Path, name: str = "app", data: bytes = b"h" * 9000) -> Path:
    tree = tmp_path / name
    (tree / "run").mkdir(parents=True)
    (tree / "run" / "default").write_text("/hello")
    change(tree / "hello", data)
    return tree


def test_output_replaced_by_a_concurrent_compose_is_never_recorded_as_ours(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another compose of the same output (spelt ``d/../d/x``: another lock) renames its
    image over the output just after ours: that image must not be recorded with our file
    identities, or it later becomes the spare and its bytes stay in our image."""
    tree, other = app(tmp_path), app(tmp_path, "other", b"z" * 9000)
    out = tmp_path / "a.raw"
    compose(cli, tree, out)
    theirs = tmp_path / "theirs.raw"
    compose(cli, other, theirs)
    real = os.replace

    def racing(src: str | Path, dst: str | Path) -> None:
        real(src, dst)
        if Path(dst) == out.absolute():
            real(theirs, out)  # the other compose lands right after ours

    change(tree / "hello", b"i" * 9000)
    monkeypatch.setattr(recompose.os, "replace", racing)
    compose(cli, tree, out)
    monkeypatch.setattr(recompose.os, "replace", real)
    compose(cli, tree, out)
    assert compose(cli, tree, out) == compose(cli, tree, tmp_path / "fresh.raw")


@pytest.mark.parametrize(("size", "code", "text"), [
    ("2049T", 65, "larger than QEMU opens"),  # its L1 table would exceed QEMU's 32 MiB
    ("9999999T", 64, "larger than 1 EiB"),  # a MemoryError, then a C long overflow
    ("1" + "9" * 400, 64, "larger than 1 EiB"),  # float infinity
], ids=["l1-too-large", "memory", "infinity"])
def test_a_disk_size_beyond_what_qemu_opens(cli, sandbox: Sandbox, tmp_path: Path, size: str,
                                            code: int, text: str) -> None:
    tree, out = app(tmp_path), tmp_path / "big.qcow2"
    check(cli("compose", "-l", "probe-loader", "-s", size, "-o", out, tree), code, text)
    assert not [p for p in tmp_path.iterdir() if "big" in p.name]  # nor a temp file


def test_the_largest_disk_qemu_opens_is_clean(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    tree, out = app(tmp_path), tmp_path / "big.qcow2"
    assert cli("compose", "-l", "probe-loader", "-s", "2048T", "-o", out, tree).code == 0
    subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the local time zone of this process (restored afterwards)."""
    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("tz", "created"), [
    ("America/New_York", "0001-01-01 00:00"),  # local midnight of year 1 is in year 0 UTC
    ("America/New_York", "9999-12-31 23:59"),
])
def test_import_with_a_time_at_the_edge_of_the_calendar(
        cli, sandbox: Sandbox, tmp_path: Path, zone: Callable[[str], None], tz: str,
        created: str) -> None:
    zone(tz)
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(4096))
    check(cli("import", "x", image, "-c", created), 64, "invalid created time")


@pytest.mark.parametrize("created", ["0001-01-01 00:00", "'0001-01-01T00:00:00+23:00'",
                                     "9999-12-31T23:59:59-23:00"])
def test_listing_and_updating_with_a_hostile_created_time(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        zone: Callable[[str], None], created: str) -> None:
    zone("America/New_York")
    remote = tmp_path / "remote" / "packages"
    remote.mkdir(parents=True)
    text = f"name: p\ntitle: T\nauthor: a\nversion: '1.0'\ncreated: {created}\n"
    for name, data in (("p.yaml", text.encode()), ("p.mpm", b"")):
        (remote / name).write_bytes(data)
        (remote / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", remote.parent.as_uri())
    packages = sandbox.root / "packages"
    packages.mkdir()
    (packages / "p.yaml").write_text(text)
    (packages / "p.mpm").write_bytes(b"")
    listed = cli("package", "list", "-f", "value", "-c", "Created")
    assert listed.code == 0 and listed.out.split() == ["N/A"], listed
    result = cli("package", "update", "--created")
    assert result.code == 0 and "Traceback" not in result.err, result
    assert "unknown created time" in result.out


def test_a_spare_that_is_a_directory_fails_no_compose(cli, sandbox: Sandbox,
                                                      tmp_path: Path) -> None:
    """The output is replaced before the spare is kept: a cache that cannot take the spare
    (a directory made there by hand) only forgets its state; it failed every compose with
    "cannot write OUTPUT: Is a directory" although the output was written."""
    tree, out = app(tmp_path), tmp_path / "a.raw"
    compose(cli, tree, out)
    compose(cli, tree, out)
    folder = recompose.state_dir(sandbox.root, out)
    (folder / "spare").unlink()
    (folder / "spare").mkdir()
    for data in (b"m" * 9000, b"n" * 9000):
        change(tree / "hello", data)
        assert compose(cli, tree, out) == compose(cli, tree, tmp_path / "fresh.raw")


def test_bidirectional_marks_in_an_index_are_shown_escaped(cli, sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    """A right-to-left override in a Description reverses what the terminal shows of the
    rest of the row (the Trojan Source trick): escaped like the other controls."""
    assert cli("compose", "-l", "probe-loader", "evil", app(tmp_path)).code == 0
    index = sandbox.root / "repository" / "evil" / "index.yaml"
    text = index.read_text().replace("description: ''", "description: \"a\\u202eb\\u2066c\"")
    index.write_text(text + "platform: \"x\\u200fy\\x9b2J\"\n")
    result = cli("images", "-f", "value", "-c", "Description", "-c", "Platform")
    assert result.code == 0, result
    assert result.out.split() == ["a\\u202eb\\u2066c", "x\\u200fy\\x9b2J"]


@pytest.mark.parametrize("host", ["proc", "ps"])
def test_another_users_process_is_never_taken_for_an_instance(
        sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """``ps`` shows every user a QEMU's argv, QMP socket path included: a local user's
    process holding that path was the instance (``capstan run NAME``: "already running",
    status running, stop signalling it). Only a process of ours is."""
    from capstan.core import pids
    from capstan.drivers.qemu.machine import find_pid, pid_alive

    if host == "ps":
        monkeypatch.setattr(pids, "PROC", tmp_path / "no-proc")
    marker = str(sandbox.root / "instances" / "qemu" / "vm" / "run" / "qmp.sock")
    mine = marker.replace("/vm/", "/mine/")
    theirs = subprocess.Popen(["sh", "-c", "sleep 60; :", marker], user="nobody", cwd="/")
    ours = subprocess.Popen(["sh", "-c", "sleep 60; :", mine], cwd="/")
    try:
        for _ in range(200):  # until both have exec'd sh (their argv is the marker then)
            if pid_alive(ours.pid, mine) and marker.encode() in Path(
                    f"/proc/{theirs.pid}/cmdline").read_bytes():
                break
            time.sleep(0.05)
        assert find_pid(mine) == ours.pid
        assert find_pid(marker) is None
        assert not pid_alive(theirs.pid, marker)
    finally:
        for child in (theirs, ours):
            child.kill()
            child.wait()
