"""Hostile ``.mpm`` archives: escapes through links, odd members, bombs, and bounded memory.

Each case installs a crafted package in the sandbox's repository and runs ``package
compose`` / ``package collect`` / ``package describe`` on it: the exit code, the one-line
message and an untouched ``outside`` tree are asserted.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_kit import Sandbox, check

Member = tuple[str, bytes, bytes | str | None]  # name, tar type, data or link target


def mpm(path: Path, members: list[Member], compress: bool = True) -> Path:
    """Write *members* as a package archive at *path*."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o755
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = str(payload)
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    path.write_bytes(gzip.compress(raw.getvalue()) if compress else raw.getvalue())
    return path


def install(root: Path, name: str, members: list[Member]) -> Path:
    """Put package *name* holding *members* in the repository of *root*."""
    packages = root / "packages"
    packages.mkdir(exist_ok=True)
    manifest = f"name: {name}\ntitle: {name}\nauthor: mallory\n"
    (packages / f"{name}.yaml").write_text(manifest)
    meta: list[Member] = [("/meta/package.yaml", tarfile.REGTYPE, manifest.encode())]
    return mpm(packages / f"{name}.mpm", meta + members)


def app(tmp_path: Path, require: str = "evil") -> Path:
    """An application package that requires *require*."""
    pkg = tmp_path / "app"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text(
        f"name: app\ntitle: app\nauthor: me\nrequire:\n  - {require}\n")
    (pkg / "hello").write_bytes(b"hello")
    return pkg


@pytest.fixture
def repo(sandbox: Sandbox) -> Callable[[list[Member]], Path]:
    """Install the bootstrap stub; return an installer of the hostile package ``evil``."""
    install(sandbox.root, "osv.bootstrap", [("/etc/hosts", tarfile.REGTYPE, b"127.0.0.1\n")])
    return lambda members: install(sandbox.root, "evil", members)


def compose(cli, pkg: Path, out: Path):  # type: ignore[no-untyped-def]
    return cli("package", "compose", "-C", pkg, "-l", "probe-loader", "-o", out,
               "--disk-format", "raw")


LINK_ESCAPES = {
    "absolute link to a host dir, then a file below it": lambda s: [
        ("/esc", tarfile.SYMTYPE, str(s.outside / "dir")),
        ("/esc/x", tarfile.REGTYPE, b"owned")],
    "absolute link to the victim's dir, then the victim's name": lambda s: [
        ("/esc", tarfile.SYMTYPE, str(s.outside)),
        ("/esc/victim", tarfile.REGTYPE, b"owned")],
    "chain of relative links": lambda s: [
        ("/a/b/c/d/e/f/g/h/up", tarfile.SYMTYPE, "../../../.."),
        ("/a/b/c/d/e/f/g/h/up/esc", tarfile.SYMTYPE, "../../../x"),
        ("/a/b/c/d/e/f/g/h/up/esc/y", tarfile.REGTYPE, b"owned")],
    "link then a directory below it": lambda s: [
        ("/esc", tarfile.SYMTYPE, str(s.outside)),
        ("/esc/dir/", tarfile.DIRTYPE, None)],
}


@pytest.mark.parametrize("case", sorted(LINK_ESCAPES))
@pytest.mark.parametrize("command", ["compose", "collect"])
def test_nothing_is_written_through_a_package_link(cli, sandbox: Sandbox, repo, tmp_path: Path,
                                                   case: str, command: str) -> None:
    repo(LINK_ESCAPES[case](sandbox))
    pkg = app(tmp_path)
    result = (compose(cli, pkg, tmp_path / "out.raw") if command == "compose"
              else cli("package", "collect", "-C", pkg))
    check(result, 65, "which is a symlink")
    assert not (tmp_path / "out.raw").exists() and not (pkg / "mpm-pkg").exists()


@pytest.mark.parametrize(("members", "code", "text"), [
    ([("../evil", tarfile.REGTYPE, b"x")], 65, "escapes the package"),
    ([("/a/../../evil", tarfile.REGTYPE, b"x")], 65, "escapes the package"),
    ([("/lib/esc", tarfile.SYMTYPE, "../../../../etc")], 65, "escapes the package"),
    ([("/abs", tarfile.SYMTYPE, "/../../etc")], 65, "escapes the package"),
    ([("/a//b", tarfile.REGTYPE, b"x")], 65, "empty segments"),
    ([("/hard", tarfile.LNKTYPE, "/etc/shadow")], 65, "hard link"),
    ([("/hard", tarfile.LNKTYPE, "../../outside/victim")], 65, "hard link"),
    ([("/dev/sda", tarfile.BLKTYPE, None)], 65, "not a file, directory or symlink"),
    ([("/tty", tarfile.CHRTYPE, None)], 65, "not a file, directory or symlink"),
    ([("/fifo", tarfile.FIFOTYPE, None)], 65, "not a file, directory or symlink"),
    ([("/d/", tarfile.DIRTYPE, None), ("/d", tarfile.REGTYPE, b"x")], 65,
     "where evil has a directory"),
])
def test_hostile_members_are_refused(cli, sandbox: Sandbox, repo, tmp_path: Path,
                                     members: list[Member], code: int, text: str) -> None:
    archive = repo(members)
    pkg = app(tmp_path)
    check(compose(cli, pkg, tmp_path / "out.raw"), code, text)
    check(cli("package", "collect", "-C", pkg), code, text)
    if "where" not in text:
        check(cli("package", "describe", archive), code, text)
    assert not (pkg / "mpm-pkg").exists()


def test_duplicate_members_never_write_through_the_earlier_link(
        cli, sandbox: Sandbox, repo, tmp_path: Path) -> None:
    repo([("/x", tarfile.SYMTYPE, str(sandbox.victim)), ("/x", tarfile.REGTYPE, b"owned"),
          ("/etc/passwd", tarfile.REGTYPE, b"guest")])
    pkg = app(tmp_path)
    assert cli("package", "collect", "-C", pkg).code == 0
    collected = pkg / "mpm-pkg"
    assert not (collected / "x").is_symlink() and (collected / "x").read_bytes() == b"owned"
    # absolute member names are package-relative: /etc/passwd lands in mpm-pkg
    assert (collected / "etc" / "passwd").read_bytes() == b"guest"
    assert compose(cli, pkg, tmp_path / "out.raw").code == 0
    assert cli("image", "cat", tmp_path / "out.raw", "/x").out == "owned"


def test_collect_replaces_an_mpm_pkg_link_without_following_it(
        cli, sandbox: Sandbox, repo, tmp_path: Path) -> None:
    repo([("/x", tarfile.REGTYPE, b"x")])
    pkg = app(tmp_path)
    (pkg / "mpm-pkg").symlink_to(sandbox.outside)
    assert cli("package", "collect", "-C", pkg).code == 0
    assert not (pkg / "mpm-pkg").is_symlink() and (pkg / "mpm-pkg" / "x").is_file()


def test_package_modes_never_keep_setuid(cli, sandbox: Sandbox, repo, tmp_path: Path) -> None:
    archive = repo([])
    raw = io.BytesIO()
    with gzip.open(archive) as src, tarfile.open(fileobj=src) as old, \
            tarfile.open(fileobj=raw, mode="w") as tar:
        for info in old:
            tar.addfile(info, old.extractfile(info))
        info = tarfile.TarInfo("/suid")
        info.mode, info.size = 0o4755, 1
        tar.addfile(info, io.BytesIO(b"x"))
    archive.write_bytes(gzip.compress(raw.getvalue()))
    pkg = app(tmp_path)
    assert cli("package", "collect", "-C", pkg).code == 0
    assert (pkg / "mpm-pkg" / "suid").stat().st_mode & 0o7777 == 0o755


def _bomb(path: Path, size: int) -> Path:
    """A gzip'd tar holding one member of *size* zero bytes (about 1000:1)."""
    head = tarfile.TarInfo("/zeros")
    head.size = size
    with open(path, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(head.tobuf(format=tarfile.GNU_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(zeros)
    return path


def test_gzip_bomb_is_refused(cli, sandbox: Sandbox, repo, tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.mpm", 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    check(cli("package", "describe", bomb), 65, "decompression bomb")
    repo([]).write_bytes(bomb.read_bytes())
    check(compose(cli, app(tmp_path), tmp_path / "out.raw"), 65, "decompression bomb")


def test_too_many_members(cli, sandbox: Sandbox, repo, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("capstan.packages.mpm.MAX_MEMBERS", 50)
    archive = repo([(f"/f{i}", tarfile.REGTYPE, b"") for i in range(60)])
    check(cli("package", "describe", archive), 65, "more than 50 members")


def test_huge_extended_header(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    info = tarfile.TarInfo("/" + "n" * 200)
    info.pax_headers = {"comment": "x" * (2 << 20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    bad = tmp_path / "pax.mpm"
    bad.write_bytes(gzip.compress(raw.getvalue()))
    check(cli("package", "describe", bad), 65, "extended header")


def test_truncated_and_corrupt_gzip(cli, sandbox: Sandbox, repo, tmp_path: Path) -> None:
    archive = repo([("/x", tarfile.REGTYPE, os.urandom(4096))])
    data = archive.read_bytes()
    cut = tmp_path / "cut.mpm"
    cut.write_bytes(data[: len(data) // 2])
    check(cli("package", "describe", cut), 65, "truncated or corrupt")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cut.write_bytes(bytes(flipped))
    check(cli("package", "describe", cut), 65, "")


# -- property: the reader never crashes, whatever the bytes -------------------------------


@pytest.fixture(scope="module")
def good_mpm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("mpm") / "good.mpm"
    mpm(path, [("/meta/package.yaml", tarfile.REGTYPE, b"name: a\ntitle: a\nauthor: a\n"),
               ("/meta/run.yaml", tarfile.REGTYPE, b"runtime: native\nconfig_set:\n"
                b"  x:\n    bootcmd: /x\n"),
               ("/bin/", tarfile.DIRTYPE, None), ("/bin/x", tarfile.REGTYPE, b"x" * 3000),
               ("/l", tarfile.SYMTYPE, "bin/x")], compress=False)
    return path.read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 1 << 16), compress=st.booleans())
def test_mutated_archives_never_crash(cli, good_mpm: bytes, tmp_path: Path,
                                      edits: list[tuple[int, int]], cut: int,
                                      compress: bool) -> None:
    data = bytearray(good_mpm)
    for at, value in edits:
        data[at % len(data)] = value
    blob = bytes(data[: max(cut, 1)])
    path = tmp_path / "fuzz.mpm"
    path.write_bytes(zlib.compress(blob) if compress and cut % 2 else
                     gzip.compress(blob) if compress else blob)
    result = cli("package", "describe", path)
    assert result.code in (0, 65), result
    assert "Traceback" not in result.err
    if result.code:
        check(result, 65)


# -- memory: any package operation in <= 100 MB RSS whatever the package size ------------

RSS_LIMIT_KB = 100 * 1024
_MEASURE = ("import resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True)\n"
            "sys.stderr.buffer.write(done.stderr)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(done.returncode)\n")


def _peak_kb(*args: str | Path, cwd: Path | None = None) -> int:
    """Peak RSS (KiB) of ``capstan ARGS`` run as a program, measured by a fresh parent."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "capstan",
                           *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_a_200_mb_package_in_bounded_memory(sandbox: Sandbox, tmp_path: Path) -> None:
    install(sandbox.root, "osv.bootstrap", [])
    pkg = tmp_path / "big"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: big\ntitle: big\nauthor: me\n")
    pattern = os.urandom(16 << 10) * 64  # random, compresses about 145:1, fast to make
    for part in range(2):
        with open(pkg / f"data{part}", "wb") as f:
            for _ in range(100):
                f.write(pattern)
    peaks = {
        "build": _peak_kb("package", "build", "-C", pkg),
        "import": _peak_kb("package", "import", "-C", pkg),
        "describe": _peak_kb("package", "describe", "big"),
    }
    user = tmp_path / "user"
    (user / "meta").mkdir(parents=True)
    (user / "meta" / "package.yaml").write_text(
        "name: user\ntitle: u\nauthor: me\nrequire:\n  - big\n")
    (user / "run").mkdir()
    (user / "run" / "default").write_text("/data0")
    peaks["compose"] = _peak_kb("package", "compose", "-C", user, "-l", "probe-loader",
                                "-o", tmp_path / "big.raw", "--disk-format", "raw")
    assert max(peaks.values()) <= RSS_LIMIT_KB, peaks
    assert (tmp_path / "big.raw").stat().st_size > 200 << 20


def test_pulled_gzip_image_bomb_is_refused(cli, sandbox: Sandbox, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from repo_server import RepoServer

    bomb = _bomb(tmp_path / "bomb.gz", 256 << 20).read_bytes()
    with RepoServer() as server:
        server.state.bucket = {
            "mallory/bomb/index.yaml": b"format_version: '1'\ndescription: boom\n",
            "mallory/bomb/bomb.qemu.gz": bomb,
        }
        monkeypatch.setenv("CAPSTAN_REPO_URL", f"{server.url}/bucket/")
        check(cli("--s3", "pull", "--insecure", "mallory/bomb"), 65, "decompression bomb")
    image = sandbox.root / "repository" / "mallory" / "bomb"
    assert not image.exists() or not any(image.glob("*.qemu"))
