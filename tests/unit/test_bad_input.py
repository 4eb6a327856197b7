"""Every input a user can get wrong: one line, a documented exit code, nothing left."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from capstan.image import loader


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def check(result, code: int, text: str) -> None:  # type: ignore[no-untyped-def]
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capstan: "), result.err
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.err


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def compose(cli, outdir: Path, *args: str | Path):  # type: ignore[no-untyped-def]
    return cli("compose", "-l", "probe-loader", "-o", outdir / "x.qcow2", *args)


def test_missing_directory(cli, outdir: Path, tmp_path: Path) -> None:
    check(compose(cli, outdir, tmp_path / "nope"), 65, "no such file or directory")
    assert listing(outdir) == []


@pytest.mark.parametrize("size", ["ten", "10X", "-1G", "0", "1.5.2G", ""])
def test_bad_sizes(cli, outdir: Path, app_tree: Path, size: str) -> None:
    check(compose(cli, outdir, f"--size={size}", app_tree), 64, "invalid size")
    assert listing(outdir) == []


def test_too_small_size_says_the_minimum(cli, outdir: Path, app_tree: Path) -> None:
    check(compose(cli, outdir, "-s", "1M", app_tree), 65, "at least")
    assert listing(outdir) == []


def test_command_line_too_long(cli, outdir: Path, app_tree: Path) -> None:
    check(compose(cli, outdir, "-c", "/x " + "a" * 1100, app_tree), 65, "at most 1023")
    assert listing(outdir) == []


def test_non_ascii_application_part(cli, outdir: Path, app_tree: Path) -> None:
    check(compose(cli, outdir, "-c", "/hello café", app_tree), 65, "printable ASCII")


def test_no_command_line_and_no_run_default(cli, outdir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    check(compose(cli, outdir, src), 64, "no command line")


def test_fifo_is_rejected(cli, outdir: Path, app_tree: Path) -> None:
    os.mkfifo(app_tree / "pipe")
    check(compose(cli, outdir, app_tree), 65, "is a FIFO")
    assert listing(outdir) == []


def test_socket_is_rejected(cli, outdir: Path, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    try:
        check(compose(cli, outdir, "-c", "/x", src), 65, "is a socket")
    finally:
        sock.close()


def test_device_is_rejected(cli, outdir: Path, tmp_path: Path) -> None:
    src = tmp_path / "d"
    src.mkdir()
    os.symlink("/dev/null", src / "link-is-fine")
    (src / "dev").mkdir()
    try:
        os.mknod(src / "dev" / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pytest.fail("this test needs root (CI runs as root)")
    check(compose(cli, outdir, "-c", "/x", src), 65, "is a character device")


def test_unreadable_file(outdir: Path, app_tree: Path) -> None:
    """Root without CAP_DAC_OVERRIDE meets a mode-000 file, as any user would."""
    secret = app_tree / "secret"
    secret.write_text("x")
    secret.chmod(0)
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--",
         sys.executable, "-m", "capstan.shell", "compose", "-l", "probe-loader",
         "-o", str(outdir / "x.qcow2"), str(app_tree)],
        capture_output=True, text=True, check=False)
    assert done.returncode == 74, done.stderr
    assert done.stderr.strip() == f"capstan: cannot read {secret}: permission denied"
    assert listing(outdir) == []


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\0" * 4096])
def test_not_a_loader(cli, outdir: Path, app_tree: Path, tmp_path: Path,
                      content: bytes) -> None:
    bad = tmp_path / "bad-loader"
    bad.write_bytes(content)
    result = cli("compose", "-l", bad, "-o", outdir / "x.qcow2", app_tree)
    check(result, 65, "not an OSv loader")
    assert listing(outdir) == []


def test_truncated_loader(cli, outdir: Path, app_tree: Path, tmp_path: Path) -> None:
    bad = tmp_path / "short"
    bad.write_bytes(loader.probe_loader_path().read_bytes()[:70000])
    check(cli("compose", "-l", bad, "-o", outdir / "x.qcow2", app_tree), 65, "does not fit")


def test_qcow2_of_garbage_is_not_a_loader(cli, outdir: Path, app_tree: Path,
                                          tmp_path: Path) -> None:
    raw = tmp_path / "g.raw"
    raw.write_bytes(os.urandom(1 << 20))
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, tmp_path / "g.qcow2"],
                   check=True)
    check(cli("compose", "-l", tmp_path / "g.qcow2", "-o", outdir / "x.qcow2", app_tree),
          65, "not an OSv loader")


def test_unknown_loader_name(cli, outdir: Path, app_tree: Path) -> None:
    check(cli("compose", "-o", outdir / "x.qcow2", app_tree), 65,
          "no such loader: 'osv-loader'")


def test_output_directory_missing(cli, app_tree: Path, tmp_path: Path) -> None:
    check(cli("compose", "-l", "probe-loader", "-o", tmp_path / "no" / "x.qcow2", app_tree),
          65, "output directory does not exist")


def test_existing_output_survives_a_failed_compose(cli, outdir: Path, app_tree: Path) -> None:
    target = outdir / "x.qcow2"
    target.write_bytes(b"precious")
    os.mkfifo(app_tree / "pipe")
    check(compose(cli, outdir, app_tree), 65, "FIFO")
    assert target.read_bytes() == b"precious" and listing(outdir) == ["x.qcow2"]


def test_usage_errors(cli, app_tree: Path) -> None:
    assert cli("compose").code == 64
    assert cli("compose", "--disk-format", "floppy", "-o", "x", app_tree).code == 64
    check(cli("compose", "-l", "probe-loader", app_tree), 64, "IMAGE_NAME or --output")
    check(cli("compose", "--fs", "zfs", "-o", "x", app_tree), 64, "ZFS builder")
    check(cli("nosuchcommand"), 64, "not a capstan command")
    check(cli("compose", "-l", "probe-loader", "../up", app_tree), 64, "invalid image name")


def test_image_commands_on_bad_images(cli, tmp_path: Path, app_tree: Path) -> None:
    check(cli("image", "info", tmp_path / "missing"), 65, "no such image")
    text = tmp_path / "text"
    text.write_text("not an image")
    check(cli("image", "ls", text), 65, "not an OSv image")
    out = tmp_path / "ok.raw"
    cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", out, app_tree)
    check(cli("image", "cat", out, "/nope"), 65, "no such file in image: /nope")
    check(cli("image", "cat", out, "/lib"), 65, "is a dir, not a file")
    bare = tmp_path / "bare.raw"
    bare.write_bytes(loader.probe_loader_path().read_bytes())
    check(cli("image", "ls", bare), 65, "no filesystem in partition 2")
