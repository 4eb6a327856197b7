"""The ZFS builder upload: cpio stream and handshake, against a strict receiver."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from capstan.core.config import load
from capstan.core.errors import BackendError, GuestTimeout
from capstan.image import tree
from capstan.image.loader import probe_loader_path
from capstan.services import zfs
from capstan.services.zfs import builder_argv, pick_port, upload

RECEIVER = Path(__file__).resolve().parents[1] / "cpio_receiver.py"


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


@pytest.fixture
def stand_in(tmp_path: Path, capstan_root: Path, monkeypatch: pytest.MonkeyPatch
             ) -> list[tuple[str | None, str, Path]]:
    """The builder VM replaced by the receiver; each launch records (builder, the disk's
    command line at boot, the directory the upload went to)."""
    from capstan.image.inspect import OsvImage
    from capstan.services import zfs

    launches: list[tuple[str | None, str, Path]] = []

    def argv(qemu: str, builder: str | None, disk: str, port: int, accel: str) -> list[str]:
        with OsvImage(Path(disk)) as img:
            booted = img.cmdline or ""
        received = tmp_path / f"received{len(launches)}"
        launches.append((builder, booted, received))
        return [sys.executable, str(RECEIVER), str(port), str(received)]

    monkeypatch.setattr(zfs, "builder_argv", argv)
    builder = capstan_root / "repository" / "osv-zfs-builder" / "osv-zfs-builder.qemu"
    builder.parent.mkdir(parents=True)
    builder.write_bytes(b"\x7fELF stand-in")
    return launches


def test_compose_zfs_with_a_stand_in_builder(app_tree: Path, tmp_path: Path,
                                             capstan_root: Path, stand_in: list) -> None:
    """Everything but the real VM: geometry, command line, the upload and publishing."""
    from capstan.image.inspect import OsvImage

    out = tmp_path / "zfs.qcow2"
    zfs.compose_zfs(load({}, {"CAPSTAN_ROOT": str(capstan_root)}), tree.collect(app_tree),
                    zfs.ZfsSpec(str(probe_loader_path()), "runscript /run/default;",
                                size=256 << 20), out)
    with OsvImage(out) as img:
        assert img.cmdline == "--rootfs=zfs runscript /run/default;"
        assert img.partition is not None and img.partition.start == 2 << 20
        assert img.partition.start + img.partition.size == 256 << 20
    [(builder, booted, received)] = stand_in
    assert builder and booted == "--rootfs=zfs runscript /run/default;"  # -kernel boots
    assert (received / "hello").read_bytes() == (app_tree / "hello").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".zfs")] == []


def test_update_uploads_only_what_changed(app_tree: Path, tmp_path: Path,
                                          capstan_root: Path, stand_in: list) -> None:
    config = load({}, {"CAPSTAN_ROOT": str(capstan_root)})
    out = tmp_path / "zfs.qcow2"

    def compose(text: str = "runscript /run/default;") -> int:
        return zfs.compose_zfs(config, tree.collect(app_tree), zfs.ZfsSpec(
            str(probe_loader_path()), text, size=256 << 20, update=True), out)

    assert compose() == len(tree.collect(app_tree))  # no image yet: a full build
    (app_tree / "hello").write_bytes(b"changed")
    (app_tree / "lib" / "new.so").write_bytes(b"new")
    (app_tree / "lib" / "block").chmod(0o600)  # a mode change is a change too
    assert compose() == 3
    builder, booted, received = stand_in[-1]
    assert builder is None and booted == "--console=serial /tools/cpiod.so --prefix /"
    assert sorted(str(p.relative_to(received)) for p in received.rglob("*")
                  if p.is_file()) == ["hello", "lib/block", "lib/new.so"]
    assert (received / "hello").read_bytes() == b"changed"

    assert compose("--verbose runscript /run/default;") == 0  # unchanged: no VM at all
    assert len(stand_in) == 2
    from capstan.image.inspect import OsvImage
    with OsvImage(out) as img:
        assert img.cmdline == "--rootfs=zfs --verbose runscript /run/default;"

    (app_tree / "lib" / "zero").unlink()  # cpiod cannot delete: a full build
    assert compose() == len(tree.collect(app_tree))
    assert stand_in[-1][0] is not None
    assert zfs.compose_zfs(config, tree.collect(app_tree), zfs.ZfsSpec(
        str(probe_loader_path()), "x", size=512 << 20, update=True), out) > 0  # another size


def test_failed_update_keeps_the_image_and_its_record(app_tree: Path, tmp_path: Path,
                                                      capstan_root: Path, stand_in: list,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = load({}, {"CAPSTAN_ROOT": str(capstan_root)})
    out = tmp_path / "zfs.qcow2"
    record = tmp_path / "zfs.qcow2.zfs-digests.json"
    zfs.compose_zfs(config, tree.collect(app_tree), zfs.ZfsSpec(
        str(probe_loader_path()), "runscript /run/default;", size=256 << 20), out)
    before = (out.read_bytes(), record.read_bytes())
    (app_tree / "hello").write_bytes(b"changed")
    monkeypatch.setattr(zfs, "builder_argv", lambda *_: [
        sys.executable, str(RECEIVER), "0", str(tmp_path), "crash"])
    with pytest.raises(BackendError, match="exited"):
        zfs.compose_zfs(config, tree.collect(app_tree), zfs.ZfsSpec(
            str(probe_loader_path()), "runscript /run/default;", update=True), out)
    assert (out.read_bytes(), record.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".zfs")) == []


def test_zfs_without_a_builder_is_a_clear_error(cli, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: z\ntitle: z\nauthor: a\n")
    boot = tmp_path / "boot"
    (boot / "meta").mkdir(parents=True)
    (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: a\n")
    assert cli("package", "import", "-C", boot).code == 0
    result = cli("package", "compose", "-C", pkg, "--fs", "zfs", "-l", "probe-loader",
                 "-o", tmp_path / "z.qcow2")
    assert result.code == 65 and "capstan pull osv-zfs-builder" in result.err


def test_package_compose_update_on_the_command_line(cli, tmp_path: Path,
                                                    stand_in: list) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: z\ntitle: z\nauthor: a\n")
    (pkg / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n"
                                           "  default: {bootcmd: /hello}\n")
    (pkg / "hello").write_bytes(b"v1")
    boot = tmp_path / "boot"
    (boot / "meta").mkdir(parents=True)
    (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: a\n")
    assert cli("package", "import", "-C", boot).code == 0
    compose = ("package", "compose", "-C", pkg, "--fs", "zfs", "-l", "probe-loader", "-s",
               "128M", "-o", tmp_path / "z.qcow2", "--update")
    assert cli(*compose).code == 0 and stand_in[-1][0] is not None  # first: full build
    (pkg / "hello").write_bytes(b"v2")
    assert cli(*compose).code == 0
    builder, _, received = stand_in[-1]
    assert builder is None and (received / "hello").read_bytes() == b"v2"
    assert [p.name for p in received.iterdir()] == ["hello"]
