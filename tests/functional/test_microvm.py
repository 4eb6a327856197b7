"""capstan run --machine microvm --kernel K: a kernel-less disk booted directly under TCG."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import states

pytestmark = pytest.mark.qemu


@pytest.fixture
def kernel_less(cli, app_tree: Path, tmp_path: Path) -> Path:
    """The app tree composed kernel-less (raw)."""
    out = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", out, app_tree).code == 0
    return out


def test_probe_kernel_boots_a_kernel_less_disk(cli, kernel_less: Path) -> None:
    before = hashlib.sha256(kernel_less.read_bytes()).hexdigest()
    done = cli.program("run", "-i", kernel_less, "--machine", "microvm", "--kernel",
                       "probe-kernel", "-m", "64M", "-c", "1", "-e", "/hello x", "mv")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--nopci --rootfs=rofs /hello x virtio_mmio.device=512@0xfeb0" \
        in done.stdout
    assert "PROBE part2 lba=00000001 " in done.stdout
    assert "PROBE rofs-magic=ok" in done.stdout and "PROBE done" in done.stdout
    assert states(cli)["mv"][0] == "stopped"
    assert hashlib.sha256(kernel_less.read_bytes()).hexdigest() == before


def test_default_command_line_and_nat_networking(cli, kernel_less: Path) -> None:
    done = cli.program("run", "-i", kernel_less, "--machine", "microvm", "--kernel",
                       "probe-kernel", "-m", "64M", "-f", "0:80", "--rm", "mv2")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--nopci --rootfs=rofs runscript /run/default; virtio_mmio" \
        in done.stdout
    assert "mv2" not in states(cli)


def test_dry_run_shows_nothing_is_written(cli, kernel_less: Path) -> None:
    done = cli("run", "-i", kernel_less, "--machine", "microvm", "--kernel", "probe-kernel",
               "--dry-run", "mv3")
    assert done.code == 0 and "would create instance mv3" in done.out
    assert "mv3" not in states(cli)


@pytest.mark.parametrize(("args", "code", "text"), [
    (("--machine", "microvm", "--dry-run"), 64, "give --kernel"),
    (("--machine", "pc", "--kernel", "probe-kernel", "--dry-run"), 64,
     "use it with --machine microvm"),
    (("--machine", "microvm", "--kernel", "/nonexistent/k.elf", "--dry-run"), 65,
     "no such kernel: '/nonexistent/k.elf'"),
    (("--machine", "microvm", "--kernel", "probe-kernel", "-p", "libvirt"), 69,
     "direct kernel boot"),
])
def test_refused(cli, kernel_less: Path, args: tuple[str, ...], code: int, text: str) -> None:
    done = cli("run", "-i", kernel_less, *args, "bad")
    assert done.code == code and text in done.err, done
