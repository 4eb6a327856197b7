"""The decompressed-package cache: hits, misses, racy and plain archives, its bounds."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.core.fs import sha256_of
from capstan.packages import records, unpacked
from capstan.packages.mpm import read_mpm


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives count as settled at once (no racy window to wait out)."""
    monkeypatch.setattr(identity, "RACY_NS", 0)


@pytest.fixture(autouse=True)
def unpin() -> Iterator[None]:
    yield
    release()


def release() -> None:
    """Let go of the tars this process uses (as its exit would)."""
    for fd in records.pinned.values():
        os.close(fd)
    records.pinned.clear()


def package(cli, tmp_path: Path, name: str, body: bytes = b"body") -> Path:  # type: ignore
    """Import package *name* (a file, a directory, a symlink, README and run.yaml)."""
    pkg = tmp_path / "src" / name
    (pkg / "meta").mkdir(parents=True, exist_ok=True)
    (pkg / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: t\nauthor: a\n")
    (pkg / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n  x:\n"
                                           "    bootcmd: /usr/bin/x\n")
    (pkg / "meta" / "README.md").write_text("# readme\n")
    (pkg / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (pkg / "usr" / "bin" / "x").write_bytes(body)
    (pkg / "usr" / "empty").mkdir(exist_ok=True)
    if not (pkg / "usr" / "bin" / "y").is_symlink():
        (pkg / "usr" / "bin" / "y").symlink_to("x")
    assert cli("package", "import", "-C", pkg).code == 0
    return Path(os.environ["CAPSTAN_ROOT"]) / "packages" / f"{name}.mpm"


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "cache" / "packages").iterdir())


def test_a_hit_reads_the_tar_and_holds_what_the_archive_holds(
        cli, tmp_path: Path, capstan_root: Path, settled: None) -> None:
    mpm = package(cli, tmp_path, "my.pkg", b"x" * 70_000)
    streamed = read_mpm(mpm)
    built = unpacked.read_cached(capstan_root, mpm)
    assert len(entries(capstan_root)) == 2  # <key>.tar and <key>.json
    release()
    hit = unpacked.read_cached(capstan_root, mpm)
    for archive in (built, hit):
        assert not archive.gzip and archive.path.parent == capstan_root / "cache" / "packages"
        assert archive.members == streamed.members
        assert archive.data == streamed.data and archive.manifest == streamed.manifest
        assert archive.run_yaml == streamed.run_yaml
    tar = hit.path.read_bytes()
    with gzip.open(mpm) as f:
        assert f.read().startswith(tar)
    body = next(m for m in hit.members if m.name == "usr/bin/x")
    assert tar[body.offset:body.offset + body.size] == b"x" * 70_000
    assert unpacked.digest(capstan_root, mpm) == sha256_of(mpm)
    assert {p.stat().st_mode & 0o777 for p in (capstan_root / "cache" / "packages").iterdir()
            } == {0o600}
    assert (capstan_root / "cache" / "packages").stat().st_mode & 0o777 == 0o700


def test_racy_and_plain_archives_are_read_streamed(cli, tmp_path: Path, capstan_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mpm = package(cli, tmp_path, "my.pkg")
    archive = unpacked.read_cached(capstan_root, mpm)  # just imported: racy
    assert archive.gzip and archive.path == mpm
    assert not (capstan_root / "cache" / "packages").exists() or not entries(capstan_root)
    monkeypatch.setattr(identity, "RACY_NS", 0)
    plain = tmp_path / "plain.mpm"
    with gzip.open(mpm) as f:
        plain.write_bytes(f.read())
    archive = unpacked.read_cached(capstan_root, plain)
    assert not archive.gzip and archive.path == plain
    assert archive.members == read_mpm(mpm).members


def test_a_damaged_record_is_rebuilt(cli, tmp_path: Path, capstan_root: Path,
                                     settled: None) -> None:
    mpm = package(cli, tmp_path, "my.pkg")
    unpacked.read_cached(capstan_root, mpm)
    release()
    record = next((capstan_root / "cache" / "packages").glob("*.json"))
    good = json.loads(record.read_text())
    record.write_text(record.read_text()[:40])
    archive = unpacked.read_cached(capstan_root, mpm)
    assert not archive.gzip and json.loads(record.read_text()) == good


def test_a_full_disk_composes_uncached(cli, tmp_path: Path, capstan_root: Path,
                                       settled: None, monkeypatch: pytest.MonkeyPatch) -> None:
    mpm = package(cli, tmp_path, "my.pkg")

    def full(self: unpacked._Sink, data: memoryview) -> None:
        self.failed = True

    monkeypatch.setattr(unpacked._Sink, "write", full)
    archive = unpacked.read_cached(capstan_root, mpm)
    assert archive.gzip and archive.path == mpm and entries(capstan_root) == []


def test_entries_of_changed_archives_and_all_but_the_last_used_go(
        cli, tmp_path: Path, capstan_root: Path, settled: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpacked, "KEEP", 2)
    mpms = [package(cli, tmp_path, f"my.p{n}") for n in range(4)]
    for mpm in mpms:
        unpacked.read_cached(capstan_root, mpm)
        release()
    assert len(entries(capstan_root)) == 4  # the two used last
    records = [json.loads(p.read_text())["source"]
               for p in (capstan_root / "cache" / "packages").glob("*.json")]
    assert sorted(records) == [str(mpms[2]), str(mpms[3])]
    in_use = unpacked.read_cached(capstan_root, mpms[2])  # held: never removed
    package(cli, tmp_path, "my.p3", b"changed")  # the entry of the old my.p3 goes
    unpacked.read_cached(capstan_root, mpms[0])
    records = [json.loads(p.read_text())["source"]
               for p in (capstan_root / "cache" / "packages").glob("*.json")]
    assert sorted(records) == [str(mpms[0]), str(mpms[2])]
    assert in_use.path.is_file()
