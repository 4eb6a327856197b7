"""Same-name races with eight processes: one winner, the others one line and no damage.

Eight ``run -d`` of one name, eight pulls of one image (plain and forced), eight
imports of one package; and where the locks live.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from crashkit import PROBE_HOLD, Result, bucket, result, spawn, states, temporaries

from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check
from repo_server import RepoServer

PROBE = probe_loader_path().read_bytes()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    with RepoServer() as srv:
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"{srv.url}/bucket/")
        yield srv


def eight(*args: str | Path) -> list[Result]:
    """``capstan ARGS`` as eight programs started together."""
    children = [spawn(*args) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(result, children))


def one_winner(results: list[Result], name: str, loser_text: str) -> None:
    winners = [r for r in results if r.code == 0]
    assert len(winners) == 1, [(r.code, r.err) for r in results]
    assert winners[0].out.count("Started instance") == 1
    for r in results:
        if r.code != 0:
            check(r, 65, loser_text)
            assert "Started instance" not in r.out


def test_eight_runs_of_one_name_have_one_winner(cli, image: Path, sandbox: Sandbox) -> None:
    results = eight("run", "-d", "-i", image, "-e", PROBE_HOLD, "race")
    one_winner(results, "race", "race")
    status, pid = states(cli)["race"]
    assert status == "running" and int(pid) > 0
    winner = next(r for r in results if r.code == 0)
    assert f"(pid {pid})" in winner.out  # the loser never replaced the winner's instance
    assert temporaries(sandbox.root / "instances") == []
    assert cli("delete", "race").code == 0


def test_eight_runs_of_a_repository_image_by_name(cli, app_tree: Path, tmp_path: Path,
                                                   sandbox: Sandbox) -> None:
    held = tmp_path / "held.qcow2"  # its guest runs until stopped
    assert cli("compose", "-l", "probe-loader", "-c", PROBE_HOLD, "-o", held,
               app_tree).code == 0
    assert cli("base", "import", held, "--name", "solo").code == 0
    results = eight("run", "-d", "solo")  # image and instance both 'solo'
    one_winner(results, "solo", "solo")
    assert states(cli)["solo"][0] == "running"
    assert cli("delete", "solo").code == 0
    res = cli("run", "-d", "-i", "solo", "-e", PROBE_HOLD, "solo")  # the name works again
    assert res.code == 0, res.err


def test_a_run_never_replaces_an_instance_another_run_is_starting(
        cli, image: Path, sandbox: Sandbox) -> None:
    assert cli("run", "-d", "-i", image, "-e", PROBE_HOLD, "taken").code == 0
    pid = states(cli)["taken"][1]
    results = eight("run", "-d", "-i", image, "-e", PROBE_HOLD, "taken")
    for r in results:
        check(r, 65, "instance taken is already running")
    assert states(cli)["taken"] == ["running", pid]


def test_eight_pulls_of_one_image_report_one_digest(cli, server: RepoServer,
                                                    sandbox: Sandbox) -> None:
    digest = bucket(server, "me/p8", PROBE)
    results = eight("pull", "me/p8", "-f", "json")
    assert all(r.code == 0 for r in results), [r.err for r in results]
    assert {json.loads(r.out)["SHA256"] for r in results} == {digest}
    assert server.state.hits["/bucket/me/p8/p8.qemu.gz"] == 1
    images = {r["Name"]: r for r in json.loads(cli("images", "-f", "json").out)}
    assert images["me/p8"]["SHA256"] == digest


def test_eight_forced_pulls_leave_one_verified_image(cli, server: RepoServer,
                                                   sandbox: Sandbox) -> None:
    digest = bucket(server, "me/f8", PROBE)
    assert cli("pull", "me/f8").code == 0
    results = eight("pull", "--force", "me/f8", "-f", "json")
    assert all(r.code == 0 for r in results), [r.err for r in results]
    assert {json.loads(r.out)["SHA256"] for r in results} == {digest}
    folder = sandbox.root / "repository" / "me" / "f8"
    assert sorted(p.name for p in folder.iterdir()) == ["f8.qemu", "index.yaml"]
    assert (folder / "f8.qemu").read_bytes() == PROBE
    assert temporaries(sandbox.root) == []


def test_eight_imports_of_one_package(cli, tmp_path: Path, sandbox: Sandbox) -> None:
    pkg = tmp_path / "osv.same"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: osv.same\ntitle: t\nauthor: a\n")
    (pkg / "data").write_bytes(os.urandom(1 << 20))
    results = eight("package", "import", "-C", pkg, "-f", "json")
    assert all(r.code == 0 for r in results), [r.err for r in results]
    archive = sandbox.root / "packages" / "osv.same.mpm"
    assert {json.loads(r.out)["SHA256"] for r in results} == \
        {hashlib.sha256(archive.read_bytes()).hexdigest()}
    assert cli("package", "describe", "osv.same").code == 0
    assert temporaries(sandbox.root) == []


def test_locks_live_under_the_root_and_only_its_owner_can_enter(
        cli, server: RepoServer, image: Path, sandbox: Sandbox) -> None:
    bucket(server, "me/lk", PROBE)
    old = os.umask(0)
    try:
        assert cli("pull", "me/lk").code == 0
        assert cli("run", "-d", "-i", image, "-e", PROBE_HOLD, "lk").code == 0
    finally:
        os.umask(old)
    locks = sandbox.root / "locks"
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700
    names = {p.name for p in locks.iterdir()}
    assert "image.me%2Flk.lock" in names and "qemu.lk.lock" in names
    found = [p for p in sandbox.root.rglob("*.lock") if p.parent != locks]
    assert found == []
    assert cli("delete", "lk").code == 0


def test_a_lock_directory_someone_else_can_write_is_tightened(
        cli, server: RepoServer, sandbox: Sandbox) -> None:
    locks = sandbox.root / "locks"
    locks.mkdir(mode=0o777)
    locks.chmod(0o777)
    bucket(server, "me/lt", PROBE)
    assert cli("pull", "me/lt").code == 0
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700


def test_a_lock_directory_owned_by_another_user_is_refused(
        cli, server: RepoServer, sandbox: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory away needs root")
    locks = sandbox.root / "locks"
    locks.mkdir()
    os.chown(locks, 65534, 65534)
    bucket(server, "me/lo", PROBE)
    check(cli("pull", "me/lo"), 74, "is not a directory of this user")
    assert not (sandbox.root / "repository" / "me" / "lo").exists()


def test_volume_locks_live_under_the_root_not_in_the_package(cli, tmp_path: Path,
                                                             sandbox: Sandbox) -> None:
    pkg = tmp_path / "vpkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: vpkg\ntitle: t\nauthor: a\n")
    results = eight("volume", "create", "-C", pkg, "-s", "1M", "data")
    assert [r.code for r in results].count(0) == 1, [r.err for r in results]
    for r in results:
        if r.code:
            check(r, 65, "already exists")
    assert cli("volume", "delete", "-C", pkg, "data").code == 0
    assert sorted(p.name for p in (pkg / "volumes").iterdir()) == []
    assert any(p.name.startswith("volumes.") for p in (sandbox.root / "locks").iterdir())
