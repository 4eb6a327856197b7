"""OSv's kernel-less disk layout (osv-image-format.md, section 10): compose, inspect, boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capstan.image import compose
from capstan.image.formats import DiskFormat
from capstan.image.inspect import OsvImage
from capstan.image.loader import probe_kernel_path
from capstan.services.disks import image_facts

from guest import boot_kernel
from test_rofs_golden import build, example_entries

pytestmark = pytest.mark.qemu


def test_layout_is_a_bare_sector_then_the_filesystem(tmp_path: Path) -> None:
    out = tmp_path / "kl.raw"
    result = compose.compose(example_entries(), compose.DiskSpec(None, "ignored", DiskFormat.RAW),
                             out)
    data = out.read_bytes()
    rofs = build(example_entries())[0]
    assert result.virtual_size == len(data) == 512 + len(rofs) == 4608
    assert result.partition_start == 512 and result.cmdline == ""
    assert not any(data[:0x1CE]) and not any(data[0x1DE:0x1FE])
    # entry 2 = (LBA 1, 8 sectors): start CHS (0, 0, 2), end CHS from LBA 9: (0, 0, 10)
    assert data[0x1CE:0x1DE] == bytes.fromhex("00000200" "83000a00" "01000000" "08000000")
    assert data[0x1FE:0x200] == b"\x55\xaa"
    assert data[512:] == rofs


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_compose_cli_and_inspection(cli, app_tree: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"kl.{fmt}"
    done = cli("compose", "--kernel-less", "--disk-format", fmt, "-o", out, app_tree)
    assert done.code == 0, done.err
    assert "command line comes from the VMM" in done.out
    info = json.loads(cli("image", "info", "-f", "json", out).out)
    assert info["layout"] == "kernel-less" and info["format"] == fmt
    assert info["cmdline"] == "" and info["loader_size"] == 0 and info["count32"] == 0
    assert info["partition_start"] == 512 and info["filesystem"] == "rofs"
    listing = cli("image", "ls", "-R", "-f", "value", "-c", "Path", out).out.split()
    assert {"/hello", "/lib/libfoo.so", "/run/default", "/etc/fstab"} <= set(listing)
    assert cli("image", "cat", out, "/run/default").raw == b"/hello"


def test_default_format_is_raw_and_repository_images_work(cli, app_tree: Path,
                                                          capstan_root: Path) -> None:
    assert cli("compose", "--kernel-less", "ns/kl", app_tree).code == 0
    info = json.loads(cli("image", "info", "-f", "json", "ns/kl").out)
    assert info["format"] == "raw" and info["layout"] == "kernel-less"
    assert (capstan_root / "repository" / "ns" / "kl" / "kl.qemu").is_file()


def test_bios_images_say_bios(cli, image: Path) -> None:
    info = json.loads(cli("image", "info", "-f", "json", image).out)
    assert info["layout"] == "bios" and info["partition_start"] == 2 * 1024 * 1024


@pytest.mark.parametrize(("args", "text"), [
    (("-c", "/hello"), "holds no command line"),
    (("-l", "probe-loader"), "has no loader"),
    (("--disk-format", "vmdk"), "raw or qcow2, not vmdk"),
])
def test_refused_options(cli, app_tree: Path, tmp_path: Path, args: tuple[str, ...],
                         text: str) -> None:
    out = tmp_path / "kl.raw"
    done = cli("compose", "--kernel-less", *args, "-o", out, app_tree)
    assert done.code == 64 and text in done.err
    assert not out.exists()


def test_no_command_line_is_ever_written_into_it(tmp_path: Path, capstan_root: Path) -> None:
    """Byte 512 is the filesystem: a run's command line must not land there."""
    out = tmp_path / "kl.raw"
    compose.compose(example_entries(), compose.DiskSpec(None, "", DiskFormat.RAW), out)
    assert image_facts(capstan_root, out).cmdline is None
    with OsvImage(out) as img:
        assert img.kernel_less and img.cmdline == ""


def test_probe_kernel_boots_with_it_under_microvm(cli, app_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", out, app_tree).code == 0
    text = "--nopci --rootfs=rofs runscript /run/default;"
    report = boot_kernel(probe_kernel_path(), text, out, tmp_path / "log",
                         machine="microvm,acpi=off,auto-kernel-cmdline=on")
    assert report["cmdline"].startswith(f"[{text} virtio_mmio.device=512@0xfeb00")
    assert report["sector0"] == out.read_bytes()[:16].hex()
    with OsvImage(out) as img:
        part = img.partition
        assert part is not None
    assert report["part2"] == f"lba=00000001 sectors={part.size // 512:08x}"
    assert report["rofs-magic"] == "ok" and "done" in report and "fail" not in report
