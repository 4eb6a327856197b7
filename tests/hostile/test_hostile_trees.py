"""Hostile application trees, Capstanfiles and images: special files, guest-path escapes,
links that would be followed, kill -9 in the middle of a compose, and mutated ROFS images.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_archives import app, install

from hostile_kit import Sandbox, check


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _device(path: Path) -> Path:
    os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
    return path


SPECIALS = {"FIFO": _fifo, "socket": _socket, "character device": _device}


@pytest.fixture
def bootstrap(sandbox: Sandbox) -> None:
    install(sandbox.root, "osv.bootstrap", [])
    install(sandbox.root, "evil", [])


@pytest.mark.parametrize("kind", sorted(SPECIALS))
@pytest.mark.parametrize("command", ["package compose", "package build", "package collect",
                                     "compose"])
def test_special_files_in_an_app_tree_are_refused_at_once(
        cli, sandbox: Sandbox, bootstrap: None, tmp_path: Path, kind: str,
        command: str) -> None:
    if kind == "character device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    pkg = app(tmp_path)
    special = SPECIALS[kind](pkg / "lib.so")
    argv = {"package compose": ("package", "compose", "-C", pkg, "-l", "probe-loader", "-o",
                                tmp_path / "o.raw", "--disk-format", "raw"),
            "package build": ("package", "build", "-C", pkg),
            "package collect": ("package", "collect", "-C", pkg),
            "compose": ("compose", "-l", "probe-loader", "-o", tmp_path / "o.raw",
                        "-c", "/x", pkg)}[command]
    # as a program, with a timeout: a FIFO that is opened hangs forever
    done = cli.program(*argv, timeout=120)
    assert "Traceback" not in done.stderr
    assert done.returncode == 65, done.stderr
    assert done.stderr.count("\n") == 1 and str(special) in done.stderr
    assert kind.split()[-1] in done.stderr or kind in done.stderr
    assert not (tmp_path / "o.raw").exists() and not (pkg / "mpm-pkg").exists()


def _project(tmp_path: Path, files: str, rootfs: bool = False) -> Path:
    proj = tmp_path / "proj"
    (proj / "ROOTFS").mkdir(parents=True)
    (proj / "data").write_text("owned")
    (proj / "Capstanfile").write_text(
        f"base: probe-loader\ncmdline: /x\n{'rootfs: ROOTFS' if rootfs else ''}\n"
        f"files:\n{files}")
    return proj


@pytest.mark.parametrize(("guest", "text"), [
    ("/../../../var/x", "invalid guest path"),
    ("/a/../../../x", "invalid guest path"),
    ("/./x", "invalid guest path"),
    ("/a//b", "invalid guest path"),
    ("x/y", "must be an absolute guest path"),
])
def test_capstanfile_guest_paths_never_escape(cli, sandbox: Sandbox, tmp_path: Path,
                                              guest: str, text: str) -> None:
    proj = _project(tmp_path, f"  '{guest}': data\n")
    result = cli("build", "-C", proj, "-o", tmp_path / "out.qcow2")
    check(result, 64 if "absolute" in text else 65, text)
    assert not (tmp_path / "out.qcow2").exists()


def test_capstanfile_never_writes_below_a_rootfs_link(cli, sandbox: Sandbox,
                                                      tmp_path: Path) -> None:
    proj = _project(tmp_path, "  /esc/victim: data\n", rootfs=True)
    (proj / "ROOTFS" / "esc").symlink_to(sandbox.outside)
    check(cli("build", "-C", proj, "-o", tmp_path / "out.qcow2"), 65, "which is a symlink")


@pytest.mark.parametrize("link_in", ["app", "package"])
def test_a_link_from_one_side_never_carries_the_other_sides_files(
        cli, sandbox: Sandbox, tmp_path: Path, link_in: str) -> None:
    install(sandbox.root, "osv.bootstrap", [])
    link = ("/esc", tarfile.SYMTYPE, str(sandbox.outside / "dir"))
    below = ("/esc/x", tarfile.REGTYPE, b"owned")
    install(sandbox.root, "evil", [link] if link_in == "package" else [below])
    pkg = app(tmp_path)
    if link_in == "app":
        (pkg / "esc").symlink_to(sandbox.outside / "dir")
    else:
        (pkg / "esc").mkdir()
        (pkg / "esc" / "x").write_text("owned")
    for argv in (("package", "collect", "-C", pkg),
                 ("package", "compose", "-C", pkg, "-l", "probe-loader", "-o",
                  tmp_path / "o.raw", "--disk-format", "raw")):
        check(cli(*argv), 65, "where evil has a")


def _scratch(tmp: Path, out: Path) -> list[Path]:
    return [*tmp.iterdir(), *out.parent.glob(".capstan-tmp.*")]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("disk_format", ["raw", "qcow2", "vdi"])
def test_kill_9_during_package_compose_leaves_no_scratch_or_children(
        sandbox: Sandbox, tmp_path: Path, disk_format: str) -> None:
    install(sandbox.root, "osv.bootstrap", [])
    pattern = os.urandom(16 << 10) * 64
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(160):
            f.write(pattern)
    pkg = app(tmp_path, require="osv.bootstrap")
    os.link(big, pkg / "big.bin")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "images" / f"app.{disk_format}"
    out.parent.mkdir()
    argv = [sys.executable, "-m", "capstan", "package", "compose", "-C", str(pkg), "-l",
            "probe-loader", "-o", str(out), "--disk-format", disk_format]
    env = {**os.environ, "TMPDIR": str(tmp)}
    fake = tmp_path / "bin"  # a qemu-img that never ends: only its parent's death ends it
    fake.mkdir()
    (fake / "qemu-img").write_text("#!/bin/sh\nexec sleep 300\n")
    (fake / "qemu-img").chmod(0o755)
    proc = subprocess.Popen(argv, env={**env, "PATH": f"{fake}:{env['PATH']}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _scratch(tmp, out) and proc.poll() is None:
            assert time.monotonic() < deadline, "compose never started writing"
            time.sleep(0.02)
        if disk_format == "vdi":  # wait for "qemu-img convert", then kill its parent
            while not _children(proc.pid) and proc.poll() is None:
                assert time.monotonic() < deadline, "qemu-img never started"
                time.sleep(0.02)
        children = _children(proc.pid)
        assert proc.poll() is None, "the compose ended before it could be killed"
        assert children or disk_format != "vdi"  # raw and qcow2 are written directly
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    deadline = time.monotonic() + 10
    try:
        while not all(_gone(child) for child in children):
            assert time.monotonic() < deadline, "a child outlived the CLI"
            time.sleep(0.05)
    finally:
        for child in children:
            if not _gone(child):
                os.kill(child, signal.SIGKILL)
    assert not list(tmp.iterdir()), "a scratch tree was left in TMPDIR"
    # what the killed compose had begun beside the output goes with the next compose
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert _scratch(tmp, out) == [] and out.is_file()


# -- property: the ROFS reader never crashes on a mutated image ----------------------------


@pytest.fixture(scope="module")
def good_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from conftest import Cli

    tree = tmp_path_factory.mktemp("tree")
    (tree / "run").mkdir()
    (tree / "run" / "default").write_text("/hello")
    (tree / "hello").write_bytes(b"h" * 1500)
    (tree / "link").symlink_to("hello")
    (tree / "d" / "e").mkdir(parents=True)
    out = tree.parent / "good.raw"
    done = Cli()("compose", "-l", "probe-loader", "-o", out, "--disk-format", "raw", tree)
    assert done.code == 0, done.err
    return out.read_bytes()


def _rofs_start(image: bytes) -> int:
    entry = image[446 + 16: 446 + 32]  # partition 2
    return int.from_bytes(entry[8:12], "little") * 512


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1,
                      max_size=12),
       cut=st.one_of(st.none(), st.integers(0, 8192)),
       path=st.sampled_from(["/hello", "/link", "/d", "/run/default", "/nope"]))
def test_mutated_images_never_crash_ls_or_cat(cli, good_image: bytes, tmp_path: Path,
                                              edits: list[tuple[int, int]], cut: int | None,
                                              path: str) -> None:
    data = bytearray(good_image)
    start = _rofs_start(good_image)
    for at, value in edits:  # aim at the superblock, tables and data of the ROFS
        data[(start + at * 7) % len(data) if at % 3 else start + at % 512] = value
    if cut is not None:
        data = data[: start + cut]
    image = tmp_path / "fuzz.raw"
    image.write_bytes(bytes(data))
    for argv in (("image", "ls", "-R", image), ("image", "cat", image, path)):
        result = cli(*argv)
        assert result.code in (0, 65), (argv, result)
        assert "Traceback" not in result.err
        if result.code:
            check(result, 65)


def test_names_that_are_not_text_are_listed_escaped(cli, tmp_path: Path) -> None:
    """Guest names are bytes: one not UTF-8 or holding a newline lists escaped, one row each."""
    tree = tmp_path / "names"
    tree.mkdir()
    (tree / "ok").write_bytes(b"x")
    os.close(os.open(bytes(tree) + b"/bad\xff\x80", os.O_CREAT | os.O_WRONLY, 0o644))
    os.close(os.open(bytes(tree) + b"/two\nlines", os.O_CREAT | os.O_WRONLY, 0o644))
    out = tmp_path / "names.raw"
    assert cli("compose", "-l", "probe-loader", "-o", out, "--disk-format", "raw", "-c", "/ok",
               tree).code == 0
    for argv in (("image", "ls", "-f", "value", "-c", "Path", out), ("image", "tree", out)):
        result = cli(*argv)
        assert result.code == 0 and result.err == "", result
        assert "bad\\xff\\x80" in result.out and "two\\nlines" in result.out, result.out
    rows = cli("image", "ls", "-f", "value", "-c", "Path", out).out.splitlines()
    assert {"/bad\\xff\\x80", "/ok", "/two\\nlines"} <= set(rows), rows
    assert not any("\n" in row or ("two" in row and row != "/two\\nlines") for row in rows)


def test_a_loader_with_a_backing_file_is_refused(cli, sandbox: Sandbox, app_tree: Path,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    """A qcow2 'loader' backed by a host file would copy that file into the image."""
    lq = tmp_path / "lq.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(sandbox.victim),
                    "-F", "raw", str(lq)], check=True)
    out = tmp_path / "out.qcow2"
    check(cli("compose", "-l", lq, "-o", out, app_tree), 65, "backing file")
    assert not out.exists()
