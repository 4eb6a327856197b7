"""Review of the decompressed-package cache, the YAML cache, the compose copy path and
capstan.lock, as a hostile package author, a local attacker or a crash would attack them.

Each case asserts the exit code, one ``capstan: `` line (or success where the guarantee is
that the attack is harmless), and that nothing outside the sandbox changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crashkit import Tmpfs, can_mount, kill9, spawn, temporaries, when
from test_hostile_pkgcache import compose, make_app, release

from capstan.core import config, identity, yamlfile
from capstan.image import rofs, sources
from capstan.packages.mpm import build_mpm

from hostile_kit import Sandbox, check

MIB = 1 << 20
NOBODY = 65534
TEXT = "disk_format: raw\n"
KEY = hashlib.sha256(b"plain\0" + TEXT.encode()).hexdigest()
RACY_S = identity.RACY_NS / 1e9  # before any monkeypatch


@pytest.fixture(autouse=True)
def settled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(identity, "RACY_NS", 0)  # no racy window to wait out
    yield
    release()
    yamlfile._store = None


# -- the YAML cache: only this user's file, in a folder no one else can write ------------

def _forge(kept: Path) -> None:
    """A forged entry with a valid check (the check is no secret): vmdk for TEXT."""
    text = json.dumps({"disk_format": "vmdk"})
    check_ = hashlib.sha256(f"{KEY}\0{text}".encode()).hexdigest()[:32]
    kept.write_text(json.dumps({"version": 1, "entries": {KEY: [{"disk_format": "vmdk"},
                                                                check_]}}))


def _foreign_file(kept: Path) -> None:
    _forge(kept)
    os.chown(kept, NOBODY, NOBODY)


def _writable_folder(kept: Path) -> None:
    _forge(kept)
    kept.parent.chmod(0o777)


def _foreign_folder(kept: Path) -> None:
    _forge(kept)
    os.chown(kept.parent, NOBODY, NOBODY)


def _hard_link_of_a_foreign_file(kept: Path) -> None:
    forged = kept.parent.parent / "forged.json"
    _forge(forged)
    os.chown(forged, NOBODY, NOBODY)
    kept.unlink()
    os.link(forged, kept)


FORGERIES = {"file of another user": _foreign_file, "folder others can write": _writable_folder,
             "folder of another user": _foreign_folder,
             "hard link to another user's file": _hard_link_of_a_foreign_file}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_yaml_cache_someone_else_could_write_is_not_believed(
        cli, sandbox: Sandbox, forge: Callable[[Path], None]) -> None:
    (sandbox.root / "config.yaml").write_text(TEXT)
    env = {"CAPSTAN_ROOT": str(sandbox.root)}
    assert config.load({}, env).disk_format == "raw"
    kept = sandbox.root / "cache" / "yaml.json"
    forge(kept)
    assert config.load({}, env).disk_format == "raw"  # the file's, not the forged entry's
    result = cli("images")
    assert result.code == 0 and "capstan:" not in result.err, result.err


def test_a_cached_parse_is_never_returned_for_other_text(cli, sandbox: Sandbox) -> None:
    env = {"CAPSTAN_ROOT": str(sandbox.root)}
    for fmt in ("raw", "vmdk", "raw", "vdi"):
        (sandbox.root / "config.yaml").write_text(f"disk_format: {fmt}\n")
        assert config.load({}, env).disk_format == fmt
    entries = json.loads((sandbox.root / "cache" / "yaml.json").read_text())["entries"]
    kept = [v[0]["disk_format"] for v in entries.values() if len(v[0]) == 1]
    assert sorted(kept) == ["raw", "vdi", "vmdk"]  # three texts, three entries


INEXACT = ["1.0\n", "{1: a}\n", "{true: a}\n", "2020-01-01\n", "{a: 2020-01-01}\n",
           "[.inf]\n", ".nan\n", "-0.0\n", "123456789012345678901234567890\n", "'\\u00e9'\n",
           '"\\ud800"\n', "{null: 1}\n", "[1, 1.0, true, '1']\n", "!!binary aGk=\n"]


@pytest.mark.parametrize("text", INEXACT)
def test_a_cached_document_is_exactly_what_a_parse_gives(tmp_path: Path, text: str) -> None:
    (tmp_path / "cache").mkdir(mode=0o700)
    yamlfile.cache_in(tmp_path / "cache")
    first = yamlfile.load_text(text, "t.yaml")
    yamlfile.cache_in(tmp_path / "cache")  # a new command: what the file keeps
    again = yamlfile.load_text(text, "t.yaml")
    assert repr(again) == repr(first)  # the same types throughout (1.0 is not 1)


def test_umask_0_and_077_give_a_private_yaml_cache(cli, sandbox: Sandbox) -> None:
    (sandbox.root / "config.yaml").write_text(TEXT)
    for umask in (0, 0o077):
        shutil.rmtree(sandbox.root / "cache", ignore_errors=True)
        env = {**os.environ, "CAPSTAN_ROOT": str(sandbox.root)}
        result = cli.program("images", env=env, preexec_fn=lambda u=umask: os.umask(u))
        assert result.returncode == 0, result.stderr
        assert (sandbox.root / "cache").stat().st_mode & 0o777 == 0o700
        assert (sandbox.root / "cache" / "yaml.json").stat().st_mode & 0o777 == 0o600


# -- the package cache: what it trusts about an archive -----------------------------------

def _mpm(tmp_path: Path, body: bytes, name: str) -> bytes:
    pkg = tmp_path / name
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: my.lib\ntitle: t\nauthor: a\n")
    (pkg / "usr" / "lib").mkdir(parents=True)
    (pkg / "usr" / "lib" / "lib.so").write_bytes(body)
    (pkg / "usr" / "lib" / "small").write_bytes(b"s")
    return build_mpm(pkg, tmp_path / f"{name}.mpm").read_bytes()


def _two_archives(tmp_path: Path, mpm: Path) -> bytes:
    """Write *mpm* anew; other bytes for it of the same size (gzip ignores trailing zeros)."""
    old = _mpm(tmp_path, os.urandom(50_000), "old")
    new = _mpm(tmp_path, os.urandom(50_000), "new")
    size = max(len(old), len(new)) + 64
    mpm.write_bytes(old.ljust(size, b"\0"))
    os.utime(mpm, ns=(1_600_000_000_000_000_000,) * 2)
    return new.ljust(size, b"\0")


def test_an_archive_rewritten_with_the_same_size_and_mtime_is_not_taken_from_the_cache(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    mpm = sandbox.root / "packages" / "my.lib.mpm"
    new = _two_archives(tmp_path, mpm)
    first = compose(cli, app, tmp_path / "a.raw")
    st = mpm.stat()
    with open(mpm, "r+b") as f:  # the same inode, size and mtime: only ctime tells
        f.write(new)
    os.utime(mpm, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (mpm.stat().st_size, mpm.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    check(cli("package", "compose", "-C", app, "-l", "probe-loader", "--disk-format", "raw",
              "-o", tmp_path / "b.raw"), 65, "pins my.lib")  # capstan.lock tells
    (app / "capstan.lock").unlink()
    second = compose(cli, app, tmp_path / "b.raw")
    assert second != first  # the new bytes, not the cached old ones
    (sandbox.root / "cache" / "packages").rename(tmp_path / "no-cache")
    assert compose(cli, app, tmp_path / "c.raw") == second


# -- the compose copy path: sources that change while files are opened ahead --------------

def _tree(tmp_path: Path, count: int = 8, size: int = 100_000) -> Path:
    root = tmp_path / "app"
    (root / "run").mkdir(parents=True)
    (root / "run" / "default").write_text("/f0")
    for i in range(count):
        (root / f"f{i}").write_bytes(bytes([65 + i]) * size)
    return root


def _on_copy(monkeypatch: pytest.MonkeyPatch, act: Callable[[], None], at: int = 0) -> None:
    """Do *act* before the copy of host file number *at* (after the files ahead of it were
    opened when *at* > 0)."""
    real = rofs._copy_host
    calls: list[bool] = []

    def hooked(entry: object, out: int, offset: int, files: object) -> None:
        calls.append(True)
        if len(calls) == at + 1:
            act()
        real(entry, out, offset, files)  # type: ignore[arg-type]

    monkeypatch.setattr(rofs, "_copy_host", hooked)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _to_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _to_victim_link(victim: Path) -> Callable[[Path], None]:
    def swap(path: Path) -> None:
        path.unlink()
        path.symlink_to(victim)
    return swap


def _to_device(path: Path) -> None:
    path.unlink()
    os.symlink("/dev/zero", path)


@pytest.mark.parametrize("kind,code,text", [("fifo", 65, "is a FIFO"),
                                            ("link", 74, "cannot read"),
                                            ("device link", 74, "cannot read")])
def test_a_source_swapped_before_it_is_opened_is_refused_and_nothing_leaks(
        cli, tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
        kind: str, code: int, text: str) -> None:
    source = _tree(tmp_path)
    monkeypatch.setattr(sources, "AHEAD_FILES", 1)  # f7 is opened only at its turn
    swap = {"fifo": _to_fifo, "link": _to_victim_link(sandbox.victim),
            "device link": _to_device}[kind]
    _on_copy(monkeypatch, lambda: swap(source / "f7"))
    out = tmp_path / "out" / "a.raw"
    out.parent.mkdir()
    before = _fds()
    check(cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", out, source),
          code, text)
    assert _fds() == before
    assert list(out.parent.iterdir()) == []


def _grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def _shrink(path: Path) -> None:
    os.truncate(path, 10)


def _punch(path: Path) -> None:
    os.truncate(path, 0)
    os.truncate(path, 100_000)  # the same size, all a hole


def _rewrite(path: Path) -> None:
    st = path.stat()
    path.write_bytes(b"Z" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only ctime tells


CHANGES = {"grown": _grow, "shrunk": _shrink, "emptied into a hole": _punch,
           "rewritten, same size and mtime": _rewrite, "turned into a FIFO": _to_fifo,
           "replaced by a link": lambda path: _to_device(path)}


@pytest.mark.parametrize("at", [0, 1], ids=["before its open", "after its open ahead"])
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_source_changed_during_the_copy_fails_the_compose_and_nothing_leaks(
        cli, tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
        change: Callable[[Path], None], at: int) -> None:
    source = _tree(tmp_path)
    _on_copy(monkeypatch, lambda: change(source / "f5"), at)
    out = tmp_path / "out" / "a.raw"
    out.parent.mkdir()
    before = _fds()
    result = cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", out, source)
    assert result.code in (65, 74), result
    check(result, result.code, "f5")
    assert _fds() == before
    assert list(out.parent.iterdir()) == []
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("preallocated", [True, False], ids=["as is", "no fallocate"])
def test_a_full_disk_is_74_in_one_line_and_leaves_nothing(
        cli, tmp_path: Path, sandbox: Sandbox, small_fs: Path,
        monkeypatch: pytest.MonkeyPatch, preallocated: bool) -> None:
    source = _tree(tmp_path, count=4, size=MIB)
    (source / "big").write_bytes(os.urandom(3 * MIB))
    if not preallocated:  # the disk fills during the copy (pwrite), not at fallocate
        monkeypatch.setattr(sources, "_fallocate", lambda *a: 95)  # EOPNOTSUPP
    check(cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o",
              small_fs / "a.raw", source), 74, "No space left")
    assert list(small_fs.iterdir()) == []
    assert temporaries(tmp_path) == []


def test_a_sparse_source_composed_onto_tmpfs_equals_a_compose_on_disk(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    source = _tree(tmp_path, count=2)
    with open(source / "sparse", "wb") as f:
        f.truncate(48 * MIB)
        f.write(b"head")
        f.seek(30 * MIB + 7)
        f.write(b"middle")
    fs = Tmpfs(tmp_path / "mem", "128m")
    try:
        for fmt in ("raw", "qcow2"):
            on_disk, in_memory = tmp_path / f"a.{fmt}", fs.path / f"a.{fmt}"
            for out in (on_disk, in_memory):
                result = cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", out,
                             source)
                assert result.code == 0, result.err
            assert subprocess.run(["cmp", on_disk, in_memory]).returncode == 0
            assert in_memory.stat().st_blocks * 512 < 8 * MIB  # the holes stayed holes
            in_memory.unlink()
    finally:
        fs.close()


# -- capstan.lock: whatever stands in its place -----------------------------------------

def _lock_app(cli, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    app = make_app(cli, tmp_path)
    compose(cli, app, tmp_path / "first.raw")
    return app


def _compose_args(app: Path, out: Path) -> list[str | Path]:
    return ["package", "compose", "-C", app, "-l", "probe-loader", "--disk-format", "raw",
            "-o", out]


def test_an_unchanged_lock_is_not_rewritten(cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    lock = app / "capstan.lock"
    before = lock.stat()
    compose(cli, app, tmp_path / "b.raw")
    after = lock.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    json.loads(lock.read_text())  # JSON-form YAML


def test_a_lock_linked_to_the_victim_is_refused_and_the_victim_untouched(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    (app / "capstan.lock").unlink()
    (app / "capstan.lock").symlink_to(sandbox.victim)
    check(cli(*_compose_args(app, tmp_path / "b.raw")), 65, "malformed lock file")


def test_a_lock_that_is_a_fifo_is_never_waited_on(cli, tmp_path: Path,
                                                  sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    text = (app / "capstan.lock").read_bytes()
    _to_fifo(app / "capstan.lock")
    result = cli.program(*_compose_args(app, tmp_path / "b.raw"), timeout=120,
                         env={**os.environ, "CAPSTAN_ROOT": str(sandbox.root)})
    assert result.returncode == 0, result.stderr
    assert (app / "capstan.lock").read_bytes() == text  # a file again, the same pins


def test_a_huge_lock_is_refused_unread(cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    os.truncate(app / "capstan.lock", 1 << 40)  # sparse: a terabyte
    check(cli(*_compose_args(app, tmp_path / "b.raw")), 65, "larger than")


def test_a_lock_that_is_a_directory_is_one_line(cli, tmp_path: Path,
                                                sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    (app / "capstan.lock").unlink()
    (app / "capstan.lock" / "sub").mkdir(parents=True)
    result = cli(*_compose_args(app, tmp_path / "b.raw"))
    check(result, 74, "capstan.lock")
    assert (app / "capstan.lock" / "sub").is_dir()


def test_a_lock_with_an_invalid_utf8_or_yaml_is_refused(cli, tmp_path: Path,
                                                        sandbox: Sandbox) -> None:
    app = _lock_app(cli, tmp_path)
    for data in (b"\xff\xfe{", b"{lock_version: 1, packages: [1, 2]}", b"a: &a [*a]"):
        (app / "capstan.lock").write_bytes(data)
        result = cli(*_compose_args(app, tmp_path / "b.raw"))
        check(result, 65, "capstan.lock")



# -- the package cache below a folder someone else could write ---------------------------

def test_a_cache_folder_of_another_user_keeps_no_package_entry(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    plain = compose(cli, app, tmp_path / "a.raw")
    shutil.rmtree(sandbox.root / "cache")
    (sandbox.root / "cache" / "packages").mkdir(parents=True, mode=0o700)
    os.chown(sandbox.root / "cache", NOBODY, NOBODY)  # could swap packages/ at any time
    assert compose(cli, app, tmp_path / "b.raw") == plain
    assert list((sandbox.root / "cache" / "packages").iterdir()) == []


def test_a_cache_folder_others_can_write_is_made_private_before_use(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    plain = compose(cli, app, tmp_path / "a.raw")
    (sandbox.root / "cache").chmod(0o777)
    assert compose(cli, app, tmp_path / "b.raw") == plain
    assert (sandbox.root / "cache").stat().st_mode & 0o777 == 0o700


def test_a_sparse_source_larger_than_the_free_space_still_composes(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root")
    source = _tree(tmp_path, count=2)
    with open(source / "sparse", "wb") as f:  # 1 GiB, a few bytes of data
        f.truncate(1 << 30)
        f.write(b"head")
        f.seek(700 * MIB)
        f.write(b"middle")
    reference = tmp_path / "ref.raw"
    assert cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", reference,
               source).code == 0
    fs = Tmpfs(tmp_path / "mem", "64m")  # far less than the preallocation would take
    try:
        for fmt in ("qcow2", "raw"):
            out = fs.path / f"a.{fmt}"
            result = cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", out,
                         source)
            assert result.code == 0, result.err
            assert out.stat().st_blocks * 512 < 16 * MIB  # the holes stayed holes
            assert subprocess.run(["qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", out,
                                   reference]).returncode == 0
            out.unlink()
    finally:
        fs.close()


# -- the package repository's archive itself replaced ------------------------------------

def _mpm_to_link(mpm: Path, sandbox: Sandbox) -> None:
    mpm.unlink()
    mpm.symlink_to(sandbox.victim)


def _mpm_to_fifo(mpm: Path, sandbox: Sandbox) -> None:
    _to_fifo(mpm)


def _mpm_to_hard_link(mpm: Path, sandbox: Sandbox) -> None:
    mpm.unlink()
    os.link(sandbox.victim, mpm)


def _mpm_truncated(mpm: Path, sandbox: Sandbox) -> None:
    os.truncate(mpm, mpm.stat().st_size // 2)


ARCHIVES = {"link to the victim": (_mpm_to_link, 74, "cannot read"),
            "FIFO": (_mpm_to_fifo, 65, "my.lib"),
            "hard link to the victim": (_mpm_to_hard_link, 65, "my.lib.mpm"),
            "truncated": (_mpm_truncated, 65, "my.lib.mpm")}


@pytest.mark.parametrize("damage,code,text", ARCHIVES.values(), ids=ARCHIVES.keys())
def test_an_archive_replaced_after_its_entry_was_made_is_refused_not_served_from_the_cache(
        cli, tmp_path: Path, sandbox: Sandbox, damage: Callable[[Path, Sandbox], None],
        code: int, text: str) -> None:
    app = make_app(cli, tmp_path)
    compose(cli, app, tmp_path / "a.raw")
    (app / "capstan.lock").unlink()
    damage(sandbox.root / "packages" / "my.lib.mpm", sandbox)
    out = tmp_path / "out" / "b.raw"
    out.parent.mkdir()
    check(cli(*_compose_args(app, out)), code, text)
    assert list(out.parent.iterdir()) == []
    assert not (app / "capstan.lock").exists()
    for record in (sandbox.root / "cache" / "packages").glob("*.json"):
        assert json.loads(record.read_text())["source"] != str(sandbox.victim)


# -- the states a kill -9 can leave in the package cache ---------------------------------

def test_a_tar_left_without_its_record_is_rebuilt_and_strays_go(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    plain = compose(cli, app, tmp_path / "a.raw")
    folder = sandbox.root / "cache" / "packages"
    records_ = list(folder.glob("*.json"))
    for record in records_:  # killed between the tar's rename and the record's
        record.unlink()
    (folder / ".capstan-tmp.killed").write_bytes(b"half a tar")  # killed mid-build
    (folder / ("0" * 32 + ".tar")).write_bytes(b"an entry whose record never came")
    os.utime(folder / ".capstan-tmp.killed", (0, 0))
    assert compose(cli, app, tmp_path / "b.raw") == plain
    assert sorted(folder.glob("*.json")) == sorted(records_)
    assert not (folder / ("0" * 32 + ".tar")).exists()
    assert temporaries(folder) == []
    for record in records_:
        data = json.loads(record.read_text())
        assert record.with_suffix(".tar").stat().st_size == data["tar"]


def test_a_yaml_cache_write_killed_midway_leaves_no_temporary_for_good(
        cli, sandbox: Sandbox) -> None:
    (sandbox.root / "config.yaml").write_text(TEXT)
    env = {"CAPSTAN_ROOT": str(sandbox.root)}
    assert config.load({}, env).disk_format == "raw"
    kept = sandbox.root / "cache" / "yaml.json"
    (kept.parent / ".capstan-tmp.killed").write_bytes(b"half of yaml.json")
    (sandbox.root / "config.yaml").write_text("disk_format: vdi\n")  # a miss: a write
    assert config.load({}, env).disk_format == "vdi"
    assert temporaries(kept.parent) == []
    assert kept.stat().st_mode & 0o777 == 0o600


def _published(folder: Path) -> bool:
    return any(folder.glob("*.tar")) if folder.is_dir() else False


def _writing_image(out: Path) -> Callable[[], bool]:
    return lambda: any(p.name.startswith(".capstan-tmp.") for p in out.parent.iterdir())


def test_kill9_once_published_or_while_the_image_is_written_leaves_a_working_cache(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path, os.urandom(24 << 20))
    time.sleep(RACY_S + 0.1)  # the child is not monkeypatched: settle
    folder = sandbox.root / "cache" / "packages"
    images = set()
    for n, point in enumerate([lambda: _published(folder),
                               _writing_image(tmp_path / "out" / "x")]):
        shutil.rmtree(sandbox.root / "cache", ignore_errors=True)
        (tmp_path / "out").mkdir(exist_ok=True)
        child = spawn(*_compose_args(app, tmp_path / "out" / "x"))
        when(point, child)
        kill9(child)
        images.add(compose(cli, app, tmp_path / f"{n}.raw"))
        assert temporaries(folder) == []
        for record in folder.glob("*.json"):
            data = json.loads(record.read_text())
            assert record.with_suffix(".tar").stat().st_size == data["tar"]
        (app / "capstan.lock").unlink(missing_ok=True)
    shutil.rmtree(folder)
    folder.write_text("no cache")  # the archives read streamed
    images.add(compose(cli, app, tmp_path / "plain.raw"))
    assert len(images) == 1


def test_many_new_documents_do_not_rewrite_the_yaml_cache_each_time(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from capstan.core import fs

    writes: list[Path] = []
    real = fs.atomic_write

    def counting(path: Path, *args: object, **kwargs: object) -> None:
        writes.append(path)
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "atomic_write", counting)
    yamlfile.cache_in(sandbox.root / "cache")  # a hostile remote: 1000 listings to parse
    for n in range(1000):
        assert yamlfile.load_text(f"name: p{n}\nfill: {'x' * 1000}\n", "remote") \
            == {"name": f"p{n}", "fill": "x" * 1000}
    assert 1 <= len(writes) <= 11  # log2(1000) + 1, not one 100 KiB rewrite per document
    yamlfile.cache_in(sandbox.root / "cache")
    kept = json.loads((sandbox.root / "cache" / "yaml.json").read_text())["entries"]
    assert len(kept) == yamlfile.MAX_KEPT


def test_documents_left_unsaved_are_saved_at_exit(cli, sandbox: Sandbox,
                                                  tmp_path: Path) -> None:
    code = ("from pathlib import Path\nfrom capstan.core import yamlfile\n"
            f"yamlfile.cache_in(Path({str(sandbox.root / 'cache')!r}))\n"
            "for n in range(3):\n    yamlfile.load_text(f'n: {n}', 'x')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    kept = json.loads((sandbox.root / "cache" / "yaml.json").read_text())["entries"]
    assert sorted(v[0]["n"] for v in kept.values()) == [0, 1, 2]  # the 3rd: at exit


# -- the cache's lock file, whatever stands in its place ----------------------------------

def _lock_of(sandbox: Sandbox) -> Path:
    from capstan.packages import records

    key = records.key_of((sandbox.root / "packages" / "my.lib.mpm").stat())
    (sandbox.root / "locks").mkdir(mode=0o700, exist_ok=True)
    return sandbox.root / "locks" / f"cache.package-{key}.lock"


def test_a_cache_lock_linked_to_the_victim_is_one_line_and_never_followed(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    _lock_of(sandbox).symlink_to(sandbox.victim)
    out = tmp_path / "out" / "a.raw"
    out.parent.mkdir()
    check(cli(*_compose_args(app, out)), 74, "cache.package-")
    assert list(out.parent.iterdir()) == []


def test_a_cache_lock_that_is_a_fifo_or_huge_is_never_read(
        cli, tmp_path: Path, sandbox: Sandbox) -> None:
    app = make_app(cli, tmp_path)
    lock = _lock_of(sandbox)
    os.mkfifo(lock)
    plain = compose(cli, app, tmp_path / "a.raw")
    shutil.rmtree(sandbox.root / "cache")
    lock.unlink()
    lock.write_bytes(b"")
    os.truncate(lock, 1 << 40)
    assert compose(cli, app, tmp_path / "b.raw") == plain
    assert lock.stat().st_size == 1 << 40
