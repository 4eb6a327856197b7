"""Hostile input to what issue 17 added for Capstan parity: ``import``, ``package
update``, group help, listings of damaged manifests, anonymous packages, volumes and
Capstan-made instance directories.

Each case: the documented exit code, one ``capstan: `` line, no traceback, and nothing
outside the sandbox changed (checked by the ``sandbox`` fixture).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hostile_kit import Sandbox, check, snapshot


def _no_image(root: Path) -> None:
    repo = root / "repository"
    assert not repo.exists() or not [p for p in repo.rglob("*") if p.is_file()]


def test_import_of_a_fifo_a_directory_or_a_device(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check(cli("import", "x", fifo), 65, "not a regular file")
    check(cli("import", "x", sandbox.outside / "dir"), 65, "directory")
    check(cli("import", "x", "/dev/zero"), 65, "not a regular file")
    _no_image(sandbox.root)


def test_import_of_an_image_that_reads_the_victim(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    """A qcow2 whose backing file is a host file would hand that file to the guest."""
    image = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(sandbox.victim), str(image), "1M"], check=True)
    check(cli("import", "evil", image), 65, "reads another file")
    vmdk = tmp_path / "evil.vmdk"
    vmdk.write_text('# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
                    f'RW 2048 FLAT "{sandbox.victim}" 0\n')
    check(cli("import", "evil", vmdk), 65, "reads another file")
    _no_image(sandbox.root)


@pytest.mark.parametrize(("argv", "code", "text"), [
    (("import", "../../escape", "IMG"), 64, "invalid image name"),
    (("import", "/abs", "IMG"), 64, "invalid image name"),
    (("import", "x", "IMG", "-c", "2017-09-14\x1b[2J"), 64, "invalid created time"),
    (("import", "x", "IMG", "-c", "9" * 10000), 64, "invalid created time"),
    (("import", "x", "gs://bucket/image.tar.gz"), 65, "unsupported image format"),
    (("package", "help", "\x1b[2Jcompose"), 64, "is not a capstan command"),
    (("package", "\x1b]0;pwned\x07"), 64, "is not a capstan command"),
])
def test_bad_arguments(cli, sandbox: Sandbox, tmp_path: Path, argv: tuple[str, ...],
                       code: int, text: str) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    result = cli(*(str(image) if a == "IMG" else a for a in argv))
    check(result, code, text)
    assert "\x1b" not in result.err and "\x07" not in result.err
    _no_image(sandbox.root)


def _local_package(root: Path, name: str, text: str | None = None) -> None:
    packages = root / "packages"
    packages.mkdir(exist_ok=True)
    (packages / f"{name}.yaml").write_text(text or f"name: {name}\ntitle: T\nauthor: a\n"
                                                   "version: '1.0'\n")
    (packages / f"{name}.mpm").write_bytes(b"")


@pytest.mark.parametrize(("remote_yaml", "code", "text"), [
    ("name: other\ntitle: T\nauthor: a\nversion: '9.0'\n", 65, "names package other"),
    ("- not\n- a mapping\n", 65, "expected a mapping"),
    ("name: [p\n", 65, "expected"),
    ("name: ../../etc\ntitle: T\nauthor: a\n", 65, "invalid package name"),
])
def test_package_update_with_a_hostile_remote_manifest(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        remote_yaml: str, code: int, text: str) -> None:
    import hashlib

    remote = tmp_path / "remote" / "packages"
    remote.mkdir(parents=True)
    (remote / "p.yaml").write_text(remote_yaml)
    (remote / "p.yaml.sha256").write_text(
        hashlib.sha256(remote_yaml.encode()).hexdigest() + "  p.yaml\n")
    (remote / "p.mpm").write_bytes(b"")
    (remote / "p.mpm.sha256").write_text(hashlib.sha256(b"").hexdigest() + "  p.mpm\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", remote.parent.as_uri())
    _local_package(sandbox.root, "p")
    before = (sandbox.root / "packages" / "p.yaml").read_bytes()
    check(cli("package", "update"), code, text)
    assert (sandbox.root / "packages" / "p.yaml").read_bytes() == before
    assert sorted(p.name for p in (sandbox.root / "packages").iterdir()) == ["p.mpm", "p.yaml"]


def test_package_list_reports_a_hostile_manifest_on_one_line(cli, sandbox: Sandbox) -> None:
    _local_package(sandbox.root, "a.ok")
    _local_package(sandbox.root, "b.bad", "name: b.bad\n\x1b[2Jkey\x07: [\n")
    result = cli("package", "list", "-f", "value", "-c", "Name")
    assert result.code == 0 and result.out.split() == ["a.ok"]
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capstan: warning: skipping ")
    assert "\x1b" not in result.err and "\x07" not in result.err


# -- package documentation, Capstan-made instances ----------------------------------


def test_describe_with_a_huge_or_binary_readme(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    pkg = tmp_path / "doc"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: doc\ntitle: Doc\nauthor: t\n")
    (pkg / "meta" / "README.md").write_bytes(b"\xff\xfe\x1b[2J\x00" + b"x" * (3 << 20))
    assert cli("package", "import", "-C", pkg).code == 0
    result = cli("package", "describe", "doc", "-f", "value", "-c", "PACKAGE DOCUMENTATION")
    assert result.code == 0 and "\x1b" not in result.out and "\x00" not in result.out
    assert len(result.out) < (2 << 20)  # only the README's first MiB is read


def _capstan_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "osv.config").write_text("name: evil\nmonitor: /etc/shadow\nimage: /etc/passwd\n")


def test_delete_of_capstan_made_instances_touches_only_its_own_files(
        cli, sandbox: Sandbox) -> None:
    instances = sandbox.root / "instances" / "qemu"
    _capstan_dir(instances / "links")
    (instances / "links" / "disk.qcow2").symlink_to(sandbox.victim)  # removed, not followed
    (instances / "links" / "osv.monitor").symlink_to(sandbox.outside / "dir")
    assert cli("delete", "links").code == 0
    assert not (instances / "links").exists()
    _capstan_dir(sandbox.outside / "dir")  # an instance directory that is a symlink
    (instances / "away").symlink_to(sandbox.outside / "dir")
    sandbox.before = snapshot(sandbox.outside)
    check(cli("delete", "away"), 65, "no such instance")
    assert (sandbox.outside / "dir" / "osv.config").is_file()
