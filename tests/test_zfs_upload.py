"""The ZFS builder upload: cpio stream and handshake, against a strict receiver."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from capstan.errors import BackendError, GuestTimeout
from capstan.image import tree
from capstan.zfsbuild import builder_argv, pick_port, upload

RECEIVER = Path(__file__).with_name("cpio_receiver.py")


def test_tree_arrives_whole(app_tree: Path, tmp_path: Path) -> None:
    (app_tree / "run" / "default").chmod(0o755)
    entries = tree.with_base(tree.collect(app_tree))
    out = tmp_path / "received"
    port = pick_port()
    upload([sys.executable, RECEIVER, str(port), str(out)], port, entries, timeout=30)
    assert (out / "hello").read_bytes() == (app_tree / "hello").read_bytes()
    assert (out / "lib" / "zero").read_bytes() == b""
    assert os.readlink(out / "lib" / "link") == "libfoo.so"
    assert (out / "empty").is_dir() and (out / "etc" / "fstab").is_file()
    assert oct((out / "run" / "default").stat().st_mode & 0o777) == "0o755"


def test_builder_that_never_listens_times_out(app_tree: Path, tmp_path: Path) -> None:
    port = pick_port()
    with pytest.raises(GuestTimeout, match=r"not ready within 1 s: OSv v0\.57\.0"):
        upload([sys.executable, RECEIVER, str(port), str(tmp_path), "silent"], port,
               tree.collect(app_tree), timeout=1)


def test_builder_that_dies_is_reported(app_tree: Path, tmp_path: Path) -> None:
    port = pick_port()
    with pytest.raises(BackendError, match=r"exited \(1\) before it was ready: Aborted"):
        upload([sys.executable, RECEIVER, str(port), str(tmp_path), "crash"], port,
               tree.collect(app_tree), timeout=30)


def test_builder_vm_argv_forwards_a_free_port() -> None:
    a, b = pick_port(), pick_port()
    argv = builder_argv("qemu-system-x86_64", "/b.elf", "/d.qcow2", a, "tcg")
    assert f"user,id=un0,hostfwd=tcp:127.0.0.1:{a}-:10000" in argv
    assert argv[argv.index("-append") + 1].startswith("--console=serial --norandom")
    assert a != 10000 and b != 10000


def test_compose_zfs_with_a_stand_in_builder(cli, app_tree: Path, tmp_path: Path,
                                             capstan_root: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything but the real VM: geometry, command line, the upload and publishing."""
    from capstan import zfsbuild
    from capstan.config import load
    from capstan.image.inspect import OsvImage
    from capstan.image.loader import probe_loader_path

    received = tmp_path / "received"
    monkeypatch.setattr(zfsbuild, "builder_argv", lambda qemu, builder, disk, port, accel: [
        sys.executable, str(RECEIVER), str(port), str(received)])
    builder = capstan_root / "repository" / "osv-zfs-builder" / "osv-zfs-builder.qemu"
    builder.parent.mkdir(parents=True)
    builder.write_bytes(b"\x7fELF stand-in")
    out = tmp_path / "zfs.qcow2"
    config = load({}, {"CAPSTAN_ROOT": str(capstan_root)})
    zfsbuild.compose_zfs(config, tree.collect(app_tree), str(probe_loader_path()), out,
                         "runscript /run/default;", size=256 << 20)
    with OsvImage(out) as img:
        assert img.cmdline == "--rootfs=zfs runscript /run/default;"
        assert img.partition is not None and img.partition.start == 2 << 20
        assert img.partition.start + img.partition.size == 256 << 20
    assert (received / "hello").read_bytes() == (app_tree / "hello").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".zfs")] == []


def test_zfs_without_a_builder_is_a_clear_error(cli, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: z\ntitle: z\nauthor: a\n")
    boot = tmp_path / "boot"
    (boot / "meta").mkdir(parents=True)
    (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: a\n")
    assert cli("package", "import", "-C", boot).code == 0
    result = cli("package", "compose", "-C", pkg, "--fs", "zfs", "-o", tmp_path / "z.qcow2")
    assert result.code == 65 and "capstan pull osv-zfs-builder" in result.err
