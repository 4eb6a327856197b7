"""Composing whole images: layout, reproducibility, formats and inspection."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from capstan.image import compose, loader
from capstan.image.formats import DiskFormat
from capstan.image.inspect import OsvImage

from test_rofs_golden import build, example_entries

RELEASE_SIZE = 3_768_320
CMDLINE = "--rootfs=rofs runscript /run/default;"


def fake_release_loader(path: Path) -> Path:
    """A file shaped like osv-loader.qemu.x86_64 v0.57 (count32 = 113)."""
    data = bytearray(os.urandom(RELEASE_SIZE))
    data[0x10:0x12] = struct.pack("<H", 113)
    data[0x1BE:0x1FE] = bytes(64)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[512:65536] = bytes(65536 - 512)
    data[65536:65541] = b"\x7fELF\x01"
    path.write_bytes(data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_section_14_worked_example(tmp_path: Path) -> None:
    ld = loader.read_loader(fake_release_loader(tmp_path / "osv-loader.qemu"))
    out = tmp_path / "image.raw"
    result = compose.compose(example_entries(), compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW), out)
    data = out.read_bytes()
    assert result.virtual_size == len(data) == 4_198_400
    assert data[0x1CE:0x1DE] == bytes.fromhex("008203008382" "0b00" "00200000" "08000000")
    assert data[0x200:0x225] == CMDLINE.encode() and len(CMDLINE) == 37
    assert not any(data[0x225:0x8000])
    assert data[:0x1BE] == ld.data[:0x1BE] and data[0x1FE:0x200] == b"\x55\xaa"
    assert data[0x8000:RELEASE_SIZE] == ld.data[0x8000:]
    assert not any(data[RELEASE_SIZE:4_194_304])
    assert data[4_194_304:] == build(example_entries())[0]


def test_size_pads_with_zeros_and_too_small_says_the_minimum(tmp_path: Path) -> None:
    ld = loader.read_loader(loader.probe_loader_path())
    out = tmp_path / "big.raw"
    result = compose.compose(example_entries(),
                             compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW, 8 << 20), out)
    assert result.virtual_size == out.stat().st_size == 8 << 20
    with pytest.raises(Exception, match=r"at least 2101248 bytes"):
        compose.compose(example_entries(), compose.DiskSpec(ld, CMDLINE, DiskFormat.RAW, 1 << 20),
                        tmp_path / "small.raw")
    assert not (tmp_path / "small.raw").exists()


def test_vhd_is_fixed_and_mib_aligned(tmp_path: Path) -> None:
    ld = loader.read_loader(loader.probe_loader_path())
    out = tmp_path / "d.vhd"
    compose.compose(example_entries(), compose.DiskSpec(ld, CMDLINE, DiskFormat.VHD), out)
    assert out.stat().st_size == (3 << 20) + 512
    assert out.read_bytes()[-512:].startswith(b"conectix")


def test_compose_is_reproducible(cli, app_tree: Path, tmp_path: Path) -> None:
    for fmt in ("raw", "qcow2"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", a,
                   app_tree).code == 0
        for f in app_tree.rglob("*"):
            if not f.is_symlink():
                os.utime(f, (1, 1))
        assert cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", b,
                   app_tree).code == 0
        assert sha256(a) == sha256(b)


@pytest.mark.parametrize("fmt", [f.label for f in DiskFormat if not f.archive])
def test_ls_and_cat_return_the_input_tree(cli, app_tree: Path, tmp_path: Path,
                                          fmt: str) -> None:
    out = tmp_path / f"img.{fmt}"
    assert cli("compose", "-l", "probe-loader", "--disk-format", fmt, "-o", out,
               app_tree).code == 0
    listing = cli("image", "ls", "-R", "-f", "value", out)
    assert listing.code == 0, listing.err
    rows = {line.split(" ")[0]: line.split(" ")[1:] for line in listing.out.splitlines()}
    expected = {"/" + str(p.relative_to(app_tree)) for p in app_tree.rglob("*")}
    base = {"/etc", "/etc/hosts", "/etc/mnttab", "/etc/fstab", "/dev", "/proc", "/sys", "/tmp"}
    assert set(rows) == expected | base | {"/"}
    assert rows["/lib/link"] == ["symlink", "0", "libfoo.so"]
    for path in app_tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            guest = "/" + str(path.relative_to(app_tree))
            with OsvImage(out) as img:
                assert b"".join(img.read(guest)) == path.read_bytes()


def test_non_ascii_names_round_trip(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "données").mkdir(parents=True)
    (src / "données" / "café.txt").write_text("crème\n")
    (src / "lien").symlink_to("données/café.txt")
    out = tmp_path / "u.qcow2"
    assert cli("compose", "-l", "probe-loader", "-c", "/x", "-o", out, src).code == 0
    cat = cli.program("image", "cat", out, "/lien")
    assert cat.returncode == 0 and cat.stdout == "crème\n"
    tree_out = cli("image", "tree", out).out
    assert "└── café.txt" in tree_out and "lien -> données/café.txt" in tree_out


def test_single_file_becomes_slash_name(cli, tmp_path: Path) -> None:
    f = tmp_path / "tool"
    f.write_bytes(b"bin")
    out = tmp_path / "t.raw"
    assert cli("compose", "-l", "probe-loader", "-c", "/tool", "--disk-format", "raw",
               "-o", out, f).code == 0
    assert cli("image", "cat", out, "/tool").raw == b"bin"


def test_info_diff_and_du(cli, app_tree: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    cli("compose", "-l", "probe-loader", "-o", a, app_tree)
    (app_tree / "hello").write_bytes(b"changed")
    (app_tree / "new").write_bytes(b"n")
    cli("compose", "-l", "probe-loader", "-c", "/hello", "-o", b, app_tree)
    info = cli("image", "info", "-f", "json", a)
    assert '"cmdline": "--rootfs=rofs runscript /run/default;"' in info.out
    assert '"filesystem": "rofs"' in info.out and '"partition_start": 2097152' in info.out
    diff = cli("image", "diff", "-f", "value", a, b)
    assert diff.out.splitlines() == [
        "M (cmdline) '--rootfs=rofs runscript /run/default;' -> '--rootfs=rofs /hello'",
        "M (partition 2) " + diff.out.splitlines()[1].split(" ", 3)[3],
        "M /hello 1028 -> 7 bytes",
        "+ /new file",
    ]
    assert cli("image", "diff", "--exit-code", a, b).code == 1
    assert cli("image", "diff", "--exit-code", a, a).code == 0
    du = cli("image", "du", "-f", "value", "-d", "1", a).out.splitlines()
    assert du[0] == "/ 6815 8704 7"
    assert "/lib 5516 5632 3" in du


def test_repository_compose_writes_index(cli, app_tree: Path, capstan_root: Path) -> None:
    assert cli("compose", "-l", "probe-loader", "ns/app", app_tree).code == 0
    image_dir = capstan_root / "repository" / "ns" / "app"
    assert (image_dir / "app.qemu").is_file()
    assert "format_version: '1'" in (image_dir / "index.yaml").read_text()
    assert cli("image", "info", "ns/app").code == 0
    assert sorted(p.name for p in image_dir.iterdir()) == ["app.qemu", "index.yaml"]


def test_loader_in_other_formats_and_composed_images(tmp_path: Path, cli,
                                                     app_tree: Path) -> None:
    qcow = tmp_path / "loader.qcow2"
    cli("image", "convert", "--disk-format", "qcow2", loader.probe_loader_path(), qcow)
    composed = tmp_path / "c.raw"
    cli("compose", "-l", "probe-loader", "--disk-format", "raw", "-o", composed, app_tree)
    pristine = loader.read_loader(loader.probe_loader_path()).data
    for source in (qcow, composed):
        assert loader.read_loader(source).data == pristine
