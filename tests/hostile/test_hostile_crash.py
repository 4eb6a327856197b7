"""kill -9 at known points of pull, import and ``run -d``; damaged state; ENOSPC.

Each case kills (or starves) the CLI where a half-done state would show, then
checks that nothing half-done is visible, that the error is one line with its
documented exit code, and that the next run of the same command works.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from crashkit import (
    PROBE_HOLD,
    bucket,
    kill9,
    publish_package,
    spawn,
    states,
    temporaries,
    when,
)

from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check
from repo_server import RepoServer, mpm

PROBE = probe_loader_path().read_bytes()
BIG = os.urandom(3 << 20)  # random: gzip keeps it about 3 MiB on the wire


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    with RepoServer() as srv:
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"{srv.url}/bucket/")
        yield srv


def image_dir(root: Path, name: str) -> Path:
    return root / "repository" / name


def images(cli) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    res = cli("images", "-f", "json")
    assert res.code == 0, res.err
    return {r["Name"]: r for r in json.loads(res.out)}


# -- pull ---------------------------------------------------------------------

def test_kill_during_a_first_pull_leaves_no_image_and_the_next_pull_works(
        cli, server: RepoServer, sandbox: Sandbox) -> None:
    digest = bucket(server, "me/big", BIG)
    server.state.hold_after["me/big/big.qemu.gz"] = 1 << 20
    child = spawn("pull", "me/big")
    when(server.state.held.is_set, child)
    kill9(child)
    assert "me/big" not in images(cli)
    assert not image_dir(sandbox.root, "me/big").exists()
    server.state.release.set()
    res = cli("pull", "me/big", "-f", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["SHA256"] == digest
    assert (image_dir(sandbox.root, "me/big") / "big.qemu").read_bytes() == BIG
    assert images(cli)["me/big"]["SHA256"] == digest


def test_kill_during_a_forced_pull_keeps_the_good_image(cli, server: RepoServer,
                                                       sandbox: Sandbox) -> None:
    old = bucket(server, "me/img", PROBE)
    assert cli("pull", "me/img").code == 0
    new = bucket(server, "me/img", BIG, b"version: v2\n")
    server.state.hold_after["me/img/img.qemu.gz"] = 1 << 20
    child = spawn("pull", "--force", "me/img")
    when(server.state.held.is_set, child)
    kill9(child)
    folder = image_dir(sandbox.root, "me/img")
    assert (folder / "img.qemu").read_bytes() == PROBE
    assert images(cli)["me/img"]["SHA256"] == old
    assert "v1" in (folder / "index.yaml").read_text()
    server.state.release.set()
    assert cli("pull", "--force", "me/img").code == 0
    assert (folder / "img.qemu").read_bytes() == BIG
    assert images(cli)["me/img"]["SHA256"] == new
    assert "v2" in (folder / "index.yaml").read_text()
    assert temporaries(sandbox.root) == []


def test_kill_while_fetching_index_yaml_publishes_no_image_without_it(
        cli, server: RepoServer, sandbox: Sandbox) -> None:
    bucket(server, "me/idx", PROBE, b"version: v1\ndescription: " + b"x" * 100000 + b"\n")
    server.state.hold_after["me/idx/index.yaml"] = 50000
    child = spawn("pull", "me/idx")
    when(server.state.held.is_set, child)
    kill9(child)
    assert not image_dir(sandbox.root, "me/idx").exists()
    server.state.release.set()
    assert cli("pull", "me/idx").code == 0
    folder = image_dir(sandbox.root, "me/idx")
    assert sorted(p.name for p in folder.iterdir()) == ["idx.qemu", "index.yaml"]


def test_a_forced_pull_of_a_corrupt_image_keeps_the_good_one(cli, server: RepoServer,
                                                           sandbox: Sandbox) -> None:
    old = bucket(server, "me/c", PROBE)
    assert cli("pull", "me/c").code == 0
    server.state.bucket["me/c/c.qemu.gz"] = b"tampered bytes"
    check(cli("pull", "--force", "me/c"), 65, "checksum mismatch")
    assert (image_dir(sandbox.root, "me/c") / "c.qemu").read_bytes() == PROBE
    assert images(cli)["me/c"]["SHA256"] == old


def test_a_malformed_remote_index_leaves_no_image(cli, server: RepoServer,
                                                  sandbox: Sandbox) -> None:
    bucket(server, "me/bad", PROBE, b"key: [unclosed\n")
    check(cli("pull", "me/bad"), 65, "malformed index.yaml")
    assert not image_dir(sandbox.root, "me/bad").exists()
    assert "me/bad" not in images(cli)


def test_kill_during_a_package_pull_and_the_next_pull_works(cli, server: RepoServer,
                                                           sandbox: Sandbox) -> None:
    archive = mpm("osv.big", os.urandom(3 << 20))
    publish_package(server, "osv.big", archive)
    server.state.hold_after["packages/osv.big.mpm"] = 1 << 20
    child = spawn("package", "pull", "osv.big")
    when(server.state.held.is_set, child)
    kill9(child)
    packages = sandbox.root / "packages"
    assert not (packages / "osv.big.yaml").exists()  # no package without its archive
    assert "osv.big" not in cli("package", "list").out
    server.state.release.set()
    assert cli("package", "pull", "osv.big").code == 0
    assert (packages / "osv.big.mpm").read_bytes() == archive
    assert (packages / "osv.big.mpm.sha256").read_text().strip() == \
        hashlib.sha256(archive).hexdigest()
    assert temporaries(sandbox.root) == []


# -- package import -------------------------------------------------------------

def _package(tmp_path: Path, name: str, payload: int = 0) -> Path:
    pkg = tmp_path / name
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: t\nauthor: a\n")
    if payload:
        (pkg / "data.bin").write_bytes(os.urandom(payload))
    return pkg


def test_kill_during_package_import_and_the_next_import_works(cli, tmp_path: Path,
                                                              sandbox: Sandbox) -> None:
    pkg = _package(tmp_path, "osv.imp", 24 << 20)
    packages = sandbox.root / "packages"
    child = spawn("package", "import", "-C", pkg)
    when(lambda: bool(temporaries(packages)) if packages.is_dir() else False, child)
    kill9(child)
    assert not (packages / "osv.imp.yaml").exists()
    res = cli("package", "import", "-C", pkg)
    assert res.code == 0, res.err
    assert (packages / "osv.imp.yaml").is_file()
    assert temporaries(sandbox.root) == []


# -- run -d ----------------------------------------------------------------------

def _complete_or_absent(root: Path, name: str) -> None:
    folder = root / "instances" / "qemu" / name
    if folder.exists():
        assert {"instance.json", "disk.qcow2", "osv.config"} <= \
            {p.name for p in folder.iterdir()}


def _runs_again(cli, image: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """After a crash, the name works: a running leftover refuses a second start,
    and the instance runs (again)."""
    if states(cli).get(name, [""])[0] == "running":
        check(cli("run", "-d", "-i", image, "-e", PROBE_HOLD, name), 65, "already running")
        assert cli("delete", name).code == 0
    res = cli("run", "-d", "-i", image, "-e", PROBE_HOLD, name)
    assert res.code == 0 and f"Started instance: {name}" in res.out, res.err
    assert states(cli)[name][0] == "running"


def test_kill_while_an_instance_is_being_built(cli, image: Path, sandbox: Sandbox) -> None:
    home = sandbox.root / "instances" / "qemu"
    child = spawn("run", "-d", "-i", image, "-e", PROBE_HOLD, "k1")
    when(lambda: home.is_dir() and bool(temporaries(home)), child)
    kill9(child)
    _complete_or_absent(sandbox.root, "k1")
    _runs_again(cli, image, "k1")
    assert temporaries(home) == []  # the stale build was swept


def test_kill_once_the_instance_appears(cli, image: Path, sandbox: Sandbox) -> None:
    home = sandbox.root / "instances" / "qemu"
    child = spawn("run", "-d", "-i", image, "-e", PROBE_HOLD, "k2")
    when(lambda: (home / "k2").exists(), child)
    child.send_signal(signal.SIGSTOP)  # look at what a kill now would leave
    _complete_or_absent(sandbox.root, "k2")
    kill9(child)
    _runs_again(cli, image, "k2")


def test_kill_once_qemu_runs_then_relaunch_by_name(cli, image: Path, sandbox: Sandbox) -> None:
    home = sandbox.root / "instances" / "qemu"
    child = spawn("run", "-d", "-i", image, "-e", PROBE_HOLD, "k3")
    when(lambda: (home / "k3" / "qemu.pid").exists(), child)
    kill9(child)
    if states(cli)["k3"][0] == "running":
        check(cli("run", "-d", "k3"), 65, "already running")
        assert cli("stop", "k3").code == 0
    res = cli("run", "-d", "k3")  # relaunch of the existing instance
    assert res.code == 0 and "Started instance: k3" in res.out, res.err


def test_an_empty_directory_left_by_an_older_crash_does_not_block_the_name(
        cli, image: Path, sandbox: Sandbox) -> None:
    (sandbox.root / "instances" / "qemu" / "k4").mkdir(parents=True)
    _runs_again(cli, image, "k4")


# -- damaged instances -------------------------------------------------------------

def _damage(root: Path, name: str, pidfile: bool = True) -> int:
    folder = root / "instances" / "qemu" / name
    pid = int(states_pid(folder))
    (folder / "instance.json").write_text("{ not json")
    if not pidfile:
        (folder / "qemu.pid").unlink()
    return pid


def states_pid(folder: Path) -> int:
    return int(json.loads((folder / "instance.json").read_text())["pid"])


@pytest.mark.parametrize("pidfile", [True, False], ids=["pidfile", "qmp-socket-owner"])
def test_a_damaged_instance_is_listed_with_its_pid_stopped_and_deleted(
        cli, image: Path, sandbox: Sandbox, pidfile: bool) -> None:
    assert cli("run", "-d", "-i", image, "-e", PROBE_HOLD, "dmg").code == 0
    pid = _damage(sandbox.root, "dmg", pidfile)
    assert states(cli)["dmg"][:2] == ["damaged", str(pid)]
    check(cli("start", "dmg"), 65, "damaged")
    check(cli("run", "-d", "dmg"), 65, "damaged")
    assert cli("stop", "--timeout", "1", "dmg").code == 0
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert cli("delete", "dmg").code == 0
    assert "dmg" not in states(cli)
    _runs_again(cli, image, "dmg")


def test_a_damaged_running_instance_is_deleted_in_one_step(cli, image: Path,
                                                          sandbox: Sandbox) -> None:
    assert cli("run", "-d", "-i", image, "-e", PROBE_HOLD, "dmg2").code == 0
    pid = _damage(sandbox.root, "dmg2")
    assert cli("delete", "dmg2").code == 0
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert not (sandbox.root / "instances" / "qemu" / "dmg2").exists()


# -- rmi and the image an instance was made on ------------------------------------------

def test_rmi_refuses_an_image_in_use_and_a_new_one_of_that_name_is_refused(
        cli, tmp_path: Path, sandbox: Sandbox, image: Path) -> None:
    assert cli("base", "import", image, "--name", "me/app").code == 0
    res = cli("run", "-d", "-i", "me/app", "-e", PROBE_HOLD, "user1")
    assert res.code == 0, res.err
    assert cli("stop", "user1").code == 0
    check(cli("rmi", "me/app"), 65, "used by instance user1")
    assert "me/app" in images(cli)
    forced = cli("rmi", "--force", "me/app")
    assert forced.code == 0 and "user1 can no longer start" in forced.err
    other = tmp_path / "other.raw"
    other.write_bytes(PROBE)
    assert cli("base", "import", other, "--name", "me/app").code == 0
    check(cli("start", "user1"), 65, "now has sha256")
    check(cli("run", "-d", "user1"), 65, "now has sha256")
    assert cli("delete", "user1").code == 0
    _runs_again(cli, sandbox.root / "repository" / "me" / "app" / "app.qemu", "user1")


# -- ENOSPC -------------------------------------------------------------------------


def test_enospc_while_unpacking_a_pulled_image_is_74_and_keeps_the_download(
        cli, server: RepoServer, small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket(server, "me/zero", bytes(8 << 20))  # 8 MiB of zeros: a few KiB gzipped
    monkeypatch.setenv("CAPSTAN_ROOT", str(small_fs))
    res = cli("pull", "me/zero")
    check(res, 74, "No space left on device")
    assert "zero.qemu" in res.err and "corrupt" not in res.err
    assert not (small_fs / "repository" / "me" / "zero").exists()
    assert temporaries(small_fs) == []


def test_enospc_while_downloading_a_package_is_74_naming_the_file(
        cli, server: RepoServer, small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish_package(server, "osv.fat", mpm("osv.fat", os.urandom(3 << 20)))
    monkeypatch.setenv("CAPSTAN_ROOT", str(small_fs))
    res = cli("package", "pull", "osv.fat")
    check(res, 74, "No space left on device")
    assert "osv.fat.mpm" in res.err
    assert not (small_fs / "packages" / "osv.fat.yaml").exists()


def test_enospc_during_package_import_is_74_naming_the_archive(
        cli, tmp_path: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(tmp_path, "osv.fat", 3 << 20)
    monkeypatch.setenv("CAPSTAN_ROOT", str(small_fs))
    res = cli("package", "import", "-C", pkg)
    check(res, 74, "No space left on device")
    assert "osv.fat.mpm" in res.err
    assert temporaries(small_fs) == [] and not (small_fs / "packages" / "osv.fat.yaml").exists()


def test_enospc_writing_a_compose_output_is_74_naming_it(cli, tmp_path: Path,
                                                        small_fs: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "blob").write_bytes(os.urandom(3 << 20))
    out = small_fs / "app.raw"
    res = cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-c", "/blob", "-o", out,
              tree)
    check(res, 74, "No space left on device")
    assert str(out) in res.err
    assert list(small_fs.iterdir()) == []


def test_enospc_importing_a_base_image_is_74_naming_the_image(
        cli, tmp_path: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.raw"
    big.write_bytes(PROBE + bytes(4 << 20))
    monkeypatch.setenv("CAPSTAN_ROOT", str(small_fs))
    res = cli("base", "import", big, "--name", "me/big")
    check(res, 74, "No space left on device")
    assert "big.qemu" in res.err and str(big) not in res.err
    assert temporaries(small_fs) == [] and "me/big" not in images(cli)


# -- package compose ------------------------------------------------------------------

def test_a_failed_package_compose_writes_no_capstan_lock(cli, tmp_path: Path,
                                                         sandbox: Sandbox) -> None:
    boot = _package(tmp_path, "osv.bootstrap")
    (boot / "etc").mkdir()
    (boot / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    assert cli("package", "import", "-C", boot).code == 0
    app = _package(tmp_path, "app.locked")
    (app / "hello").write_text("hi")
    (app / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n  default:\n"
                                           "    bootcmd: /hello\n")
    res = cli("package", "compose", "-C", app, "-l", "no-such-loader", "-o",
              tmp_path / "out.qcow2")
    check(res, 65, "no-such-loader")
    assert not (app / "capstan.lock").exists()
    res = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o",
              tmp_path / "out.qcow2")
    assert res.code == 0, res.err
    assert "osv.bootstrap" in (app / "capstan.lock").read_text()


def test_replacing_an_image_keeps_the_images_nested_in_its_namespace(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    loader = tmp_path / "l.raw"
    loader.write_bytes(PROBE)
    assert cli("base", "import", loader, "--name", "me/inner").code == 0
    assert cli("base", "import", loader, "--name", "me").code == 0
    loader.write_bytes(PROBE + bytes(512))
    assert cli("base", "import", loader, "--name", "me").code == 0  # replaces 'me' whole
    found = images(cli)
    assert {"me", "me/inner"} <= set(found)
    assert found["me"]["SHA256"] == hashlib.sha256(PROBE + bytes(512)).hexdigest()
    assert found["me/inner"]["SHA256"] == hashlib.sha256(PROBE).hexdigest()
    check(cli("rmi", "me/nothing"), 65, "no such image")
    assert temporaries(sandbox.root) == []
