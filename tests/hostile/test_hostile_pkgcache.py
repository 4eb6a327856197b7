"""Hostile decompressed-package cache (``$CAPSTAN_ROOT/cache/packages``): damaged, forged,
truncated or oversized records and tars, links and FIFOs planted in their place, a cache
directory that points elsewhere, kill -9 mid-build, any umask, concurrent composes.

Every damaged entry is a miss: the compose writes the same image as a compose without the
cache, the entry is rebuilt, nothing is followed and nothing outside changes."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crashkit import kill9, spawn, temporaries, when

from capstan.core import identity
from capstan.packages import records

from hostile_kit import Sandbox, check, snapshot

_Damage = Callable[[Path, Path, Sandbox], None]  # (record, tar, sandbox)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "RACY_NS", 0)  # no racy window to wait out


@pytest.fixture(autouse=True)
def unpin() -> Iterator[None]:
    yield
    release()


def release() -> None:
    """Let go of the tars this process uses (as its exit would)."""
    for fd in records.pinned.values():
        os.close(fd)
    records.pinned.clear()


def make_app(cli, tmp_path: Path, body: bytes = b"L" * 50_000) -> Path:  # type: ignore
    """Import osv.bootstrap and my.lib; the application that requires my.lib."""
    for name, files in (("osv.bootstrap", {"etc/hosts": b"127.0.0.1 localhost\n"}),
                        ("my.lib", {"usr/lib/lib.so": body, "usr/lib/small": b"s"})):
        pkg = tmp_path / "src" / name
        (pkg / "meta").mkdir(parents=True, exist_ok=True)
        (pkg / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: t\nauthor: a\n")
        for rel, data in files.items():
            (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            (pkg / rel).write_bytes(data)
        if name == "my.lib":
            (pkg / "usr" / "lib" / "link.so").symlink_to("lib.so")
        assert cli("package", "import", "-C", pkg).code == 0
    app = tmp_path / "app"
    (app / "meta").mkdir(parents=True)
    (app / "meta" / "package.yaml").write_text("name: my.app\ntitle: t\nauthor: a\n"
                                               "require: [my.lib]\n")
    (app / "hello").write_text("hello\n")
    (app / "run").mkdir()
    (app / "run" / "default").write_text("/hello")
    return app


def compose(cli, app: Path, out: Path) -> bytes:  # type: ignore[no-untyped-def]
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "--disk-format",
                 "raw", "-o", out)
    assert result.code == 0 and "capstan:" not in result.err, result.err
    release()
    return out.read_bytes()


def entry(root: Path) -> tuple[Path, Path]:
    """The record and tar of my.lib."""
    for record in (root / "cache" / "packages").glob("*.json"):
        if json.loads(record.read_text())["source"].endswith("my.lib.mpm"):
            return record, record.with_suffix(".tar")
    raise AssertionError("no entry of my.lib")


def valid(root: Path) -> bool:
    record, tar = entry(root)
    data = json.loads(record.read_text())
    return not tar.is_symlink() and tar.is_file() and tar.stat().st_size == data["tar"] \
        and tar.stat().st_nlink == 1


def _edit(change: Callable[[dict], None]) -> _Damage:  # type: ignore[type-arg]
    def damage(record: Path, tar: Path, sandbox: Sandbox) -> None:
        data = json.loads(record.read_text())
        change(data)
        record.write_text(json.dumps(data))
    return damage


def _member(index: int, value: object, name: str = "usr/lib/lib.so") -> _Damage:
    def change(data: dict) -> None:  # type: ignore[type-arg]
        for m in data["members"]:
            if m[0] == name:
                m[index] = value
    return _edit(change)


def _garbage(record: Path, tar: Path, sandbox: Sandbox) -> None:
    record.write_bytes(b"\xff{not json")


def _truncated_record(record: Path, tar: Path, sandbox: Sandbox) -> None:
    record.write_bytes(record.read_bytes()[:100])


def _oversized_record(record: Path, tar: Path, sandbox: Sandbox) -> None:
    with record.open("r+b") as f:
        f.truncate(200 << 20)  # sparse: costs nothing on disk


def _record_is_a_directory(record: Path, tar: Path, sandbox: Sandbox) -> None:
    record.unlink()
    record.mkdir()


def _record_links_to_a_forged_one(record: Path, tar: Path, sandbox: Sandbox) -> None:
    forged = sandbox.outside / "dir" / "forged.json"
    forged.write_bytes(record.read_bytes())
    sandbox.before = snapshot(sandbox.outside)  # planted by the attacker
    record.unlink()
    record.symlink_to(forged)


def _foreign_record(record: Path, tar: Path, sandbox: Sandbox) -> None:
    other = next(p for p in record.parent.glob("*.json") if p != record)
    record.write_bytes(other.read_bytes())  # osv.bootstrap's, under my.lib's key


def _truncated_tar(record: Path, tar: Path, sandbox: Sandbox) -> None:
    with tar.open("r+b") as f:
        f.truncate(tar.stat().st_size // 2)


def _longer_tar(record: Path, tar: Path, sandbox: Sandbox) -> None:
    with tar.open("ab") as f:
        f.write(b"\0" * 512)


def _tar_links_to_the_victim(record: Path, tar: Path, sandbox: Sandbox) -> None:
    tar.unlink()
    tar.symlink_to(sandbox.victim)
    _aim_at(record, sandbox.victim.stat().st_size)


def _tar_is_a_hard_link_to_the_victim(record: Path, tar: Path, sandbox: Sandbox) -> None:
    tar.unlink()
    os.link(sandbox.victim, tar)
    _aim_at(record, sandbox.victim.stat().st_size)


def _aim_at(record: Path, size: int) -> None:
    """Forge the record: a tar of *size* bytes whose first bytes are lib.so."""
    data = json.loads(record.read_text())
    data["tar"] = size
    for m in data["members"]:
        if m[1] == "file":
            m[3], m[5] = min(m[3], size), 0
    record.write_text(json.dumps(data))


def _tar_is_a_fifo(record: Path, tar: Path, sandbox: Sandbox) -> None:
    tar.unlink()
    os.mkfifo(tar)


def _tar_is_missing(record: Path, tar: Path, sandbox: Sandbox) -> None:
    tar.unlink()


def _meta(name: str, text: str) -> _Damage:
    def change(data: dict) -> None:  # type: ignore[type-arg]
        data["meta"][name] = text
    return _edit(change)


DAMAGE: dict[str, _Damage] = {
    "garbage": _garbage,
    "truncated record": _truncated_record,
    "oversized record": _oversized_record,
    "record is a directory": _record_is_a_directory,
    "record links to a forged one": _record_links_to_a_forged_one,
    "foreign record": _foreign_record,
    "a list": _edit(lambda d: d.clear()),
    "other version": _edit(lambda d: d.update(version=99)),
    "other boot": _edit(lambda d: d.update(boot="another")),
    "other identity": _edit(lambda d: d.update(identity=[1, 2, 3, 4, 5])),
    "tar size a bool": _edit(lambda d: d.update(tar=True)),
    "tar size huge": _edit(lambda d: d.update(tar=1 << 62)),
    "members not a list": _edit(lambda d: d.update(members={"a": 1})),
    "member short": _edit(lambda d: d["members"].append(["x", "file"])),
    "offset past the tar": _member(5, 1 << 40),
    "negative offset": _member(5, -512),
    "size past the tar": _member(3, 1 << 32),
    "mode a bool": _member(2, True),
    "mode too big": _member(2, 0o170777),
    "unknown kind": _member(1, "fifo"),
    "name escapes": _member(0, "../../outside/victim"),
    "absolute name": _member(0, "/etc/passwd"),
    "dot name": _member(0, "./usr/lib/lib.so"),
    "name with NUL": _member(0, "usr/lib/\0x"),
    "dot-dot inside": _member(0, "usr/../../x"),
    "symlink escapes": _member(4, "../../../../../etc/shadow", "usr/lib/link.so"),
    "symlink to nothing": _member(4, "", "usr/lib/link.so"),
    "file with a link": _member(4, "x"),
    "meta not base64": _meta("meta/package.yaml", "!!!"),
    "meta unknown": _meta("meta/evil.sh", ""),
    "meta oversized": _meta("meta/run.yaml", "A" * (3 << 20)),
    "truncated tar": _truncated_tar,
    "longer tar": _longer_tar,
    "tar links to the victim": _tar_links_to_the_victim,
    "tar is a hard link to the victim": _tar_is_a_hard_link_to_the_victim,
    "tar is a FIFO": _tar_is_a_fifo,
    "tar missing": _tar_is_missing,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_a_miss_and_rebuilt(cli, tmp_path: Path, sandbox: Sandbox,
                                               settled: None, damage: _Damage) -> None:
    app = make_app(cli, tmp_path)
    fresh = compose(cli, app, tmp_path / "fresh.img")
    assert valid(sandbox.root)
    record, tar = entry(sandbox.root)
    damage(record, tar, sandbox)
    mpm = sandbox.root / "packages" / "my.lib.mpm"
    st = mpm.stat()
    with pytest.raises(records.Bad):  # refused as it is, before the compose rebuilds it
        records.hit(record.parent, records.key_of(st), mpm, st)
    assert compose(cli, app, tmp_path / "again.img") == fresh
    assert valid(sandbox.root)
    assert not record.is_symlink() and (sandbox.outside / "victim").stat().st_nlink == 1


def test_a_cache_that_points_elsewhere_is_not_used(cli, tmp_path: Path, sandbox: Sandbox,
                                                   settled: None) -> None:
    app = make_app(cli, tmp_path)
    (sandbox.root / "cache").mkdir(exist_ok=True)
    (sandbox.root / "cache" / "packages").symlink_to(sandbox.outside / "dir")
    fresh = compose(cli, app, tmp_path / "fresh.img")
    (sandbox.root / "cache" / "packages").unlink()
    os.mkfifo(sandbox.root / "cache" / "packages")
    assert compose(cli, app, tmp_path / "again.img") == fresh
    (sandbox.root / "cache" / "packages").unlink()
    assert compose(cli, app, tmp_path / "cached.img") == fresh  # and through the cache


def test_strays_in_the_cache_are_removed_never_followed(cli, tmp_path: Path,
                                                        sandbox: Sandbox, settled: None) -> None:
    app = make_app(cli, tmp_path)
    folder = sandbox.root / "cache" / "packages"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    (folder / ("0" * 32 + ".json")).symlink_to(sandbox.victim)
    (folder / ("1" * 32 + ".tar")).symlink_to(sandbox.outside / "dir")
    compose(cli, app, tmp_path / "a.img")
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".tar", ".tar"]


def _bomb() -> bytes:
    """An .mpm whose one member expands far beyond what its size allows."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("meta/package.yaml")
        text = b"name: my.lib\ntitle: t\nauthor: a\n"
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        info = tarfile.TarInfo("zeros")
        info.size = 80 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return gzip.compress(buf.getvalue(), compresslevel=9)


@pytest.mark.parametrize("bad", ["bomb", "truncated"])
def test_a_bad_archive_is_refused_and_leaves_no_entry(cli, tmp_path: Path, sandbox: Sandbox,
                                                      settled: None, bad: str) -> None:
    app = make_app(cli, tmp_path)
    mpm = sandbox.root / "packages" / "my.lib.mpm"
    data = mpm.read_bytes()
    mpm.write_bytes(_bomb() if bad == "bomb" else data[:len(data) // 2])
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o",
                 tmp_path / "a.img")
    check(result, 65, "decompression bomb" if bad == "bomb" else "truncated or corrupt")
    folder = sandbox.root / "cache" / "packages"
    assert not list(folder.glob("*.tar")) or all(
        json.loads(p.read_text())["source"].endswith("bootstrap.mpm")
        for p in folder.glob("*.json"))
    assert temporaries(sandbox.root) == []


def _settle() -> None:
    time.sleep(identity.RACY_NS / 1e9 + 0.1)  # a separate program: no monkeypatch there


def _building(folder: Path) -> bool:
    """Whether a tar of more than 1 MiB is being written in *folder*."""
    try:
        return any(p.name.startswith(".capstan-tmp.") and p.stat().st_size > (1 << 20)
                   for p in folder.iterdir())
    except OSError:
        return False


def test_kill_mid_build_leaves_no_entry_and_any_umask_gives_private_state(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path, os.urandom(24 << 20))
    _settle()
    folder = sandbox.root / "cache" / "packages"
    child = spawn("package", "compose", "-C", app, "-l", "probe-loader", "-o",
                  tmp_path / "a.img")
    when(lambda: _building(folder), child)
    kill9(child)
    assert not any(json.loads(p.read_text())["source"].endswith("my.lib.mpm")
                   for p in folder.glob("*.json"))
    for umask in (0o000, 0o077):
        done = cli.program("package", "compose", "-C", app, "-l", "probe-loader", "-o",
                           tmp_path / f"{umask}.img", preexec_fn=lambda m=umask: os.umask(m))
        assert done.returncode == 0, done.stderr
        assert temporaries(folder) == [] and valid(sandbox.root)
        assert folder.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
        for p in folder.iterdir():
            p.unlink()
    assert (tmp_path / "0.img").read_bytes() == (tmp_path / "63.img").read_bytes()


def test_concurrent_composes_share_the_cache(cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path, os.urandom(4 << 20))
    _settle()
    argv = ["package", "compose", "-C", str(app), "-l", "probe-loader"]
    children = [spawn(*argv, "-o", str(tmp_path / f"{n}.img")) for n in range(3)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    images = {(tmp_path / f"{n}.img").read_bytes() for n in range(3)}
    assert len(images) == 1 and valid(sandbox.root)
    done = subprocess.run(["qemu-img", "check", str(tmp_path / "0.img")], check=False,
                          capture_output=True)
    assert done.returncode == 0, done.stdout
