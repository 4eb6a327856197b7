"""Findings of an attacker's review of issue 14's guarantees, each a case of its own."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from hostile_kit import Sandbox, check


def _chained(path: Path, other: Path, kind: str) -> Path:
    """A qcow2 image at *path* whose backing file is *other*, or a vmdk whose extent is."""
    if kind == "backing file":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(other), "-F", "raw",
                        str(path), "1M"], check=True)
    else:
        path.write_text(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                        f'createType="monolithicFlat"\nRW 1 FLAT "{other}" 0\n'
                        'ddb.virtualHWVersion = "4"\n')
    return path


@pytest.mark.parametrize("kind", ["backing file", "extent"])
def test_a_pulled_image_that_reads_a_host_file_is_refused(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """A verified remote image that names /etc/shadow as its backing file (or vmdk extent)
    would give the guest the host file as its disk: refused, nothing stored."""
    top = tmp_path / "bucket"
    (top / "ns" / "bk").mkdir(parents=True)
    image = _chained(top / "ns" / "bk" / "bk.qemu", sandbox.victim, kind)
    Path(f"{image}.sha256").write_text(hashlib.sha256(image.read_bytes()).hexdigest() + "\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", top.as_uri())
    check(cli("pull", "ns/bk"), 65, "reads another file")
    assert not (sandbox.root / "repository" / "ns" / "bk").exists()


@pytest.mark.parametrize("kind", ["backing file", "extent"])
def test_running_an_image_that_reads_a_host_file_is_refused(
        cli, sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    image = _chained(tmp_path / "chained.img", sandbox.victim, kind)
    check(cli("run", "bk", "-i", image, "-d"), 65, "reads another file")
    assert not (sandbox.root / "instances" / "qemu" / "bk").exists()


def test_remote_and_package_text_cannot_split_rows_or_drive_the_terminal(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote index.yaml's ``created`` and a package's title reach tables escaped."""
    from capstan.image.loader import probe_loader_path

    top = tmp_path / "bucket"
    (top / "ns" / "img").mkdir(parents=True)
    (top / "ns" / "img" / "img.qemu").write_bytes(probe_loader_path().read_bytes())
    (top / "ns" / "img" / "index.yaml").write_text('created: "2020\\nFAKE | row \\e[2J"\n')
    for name in ("img.qemu", "index.yaml"):
        file = top / "ns" / "img" / name
        Path(f"{file}.sha256").write_text(hashlib.sha256(file.read_bytes()).hexdigest() + "\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", top.as_uri())
    assert cli("pull", "ns/img").code == 0
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text(
        'name: p3\ntitle: "T\\e]0;pwned\\a\\nrow2"\nauthor: a\nversion: "1\\n2"\n')
    assert cli("package", "import", "-C", pkg).code == 0
    for argv in (("images", "-f", "value"), ("package", "list", "-f", "value"),
                 ("package", "describe", "p3", "-f", "value")):
        result = cli(*argv)
        assert result.code == 0 and "\x1b" not in result.out and "\x07" not in result.out
        assert not any(line.startswith(("FAKE", "row2", "2 ")) for line in
                       result.out.splitlines()), result.out
    # not a time Capstan reads: shown as N/A, as Capstan shows it (issue 17, gap 1)
    assert cli("images", "-f", "value", "-c", "Created").out.split() == ["N/A"]


@pytest.mark.parametrize("cpu", ["help", "max,-drive,file=/etc/shadow", "-S,x", "max\n"])
def test_cpu_model_is_refused_unless_a_model_and_features(cli, sandbox: Sandbox,
                                                          tmp_path: Path, cpu: str) -> None:
    from capstan.image.loader import probe_loader_path

    check(cli("run", "c", "-i", probe_loader_path(), "--dry-run", f"--cpu={cpu}"), 64,
          "invalid --cpu")
    assert not (sandbox.root / "instances" / "qemu" / "c").exists()


@pytest.mark.parametrize("argv", [("base", "import", "{fifo}", "--name", "f"),
                                  ("image", "info", "{fifo}"),
                                  ("run", "f", "-i", "{fifo}", "--dry-run")])
def test_a_fifo_given_as_an_image_is_never_opened(cli, sandbox: Sandbox, tmp_path: Path,
                                                  argv: tuple[str, ...]) -> None:
    """``base import FIFO`` blocked for ever in open(); now refused at once."""
    fifo = tmp_path / "loader.img"
    os.mkfifo(fifo)
    check(cli(*(a.format(fifo=fifo) for a in argv)), 65, "not a regular file")
    assert not (sandbox.root / "repository" / "f").exists()


def test_rmi_of_a_namespace_image_keeps_the_images_below_it(cli, sandbox: Sandbox) -> None:
    """``rmi ns`` deleted ``ns/a`` too (the whole directory), even in use by an instance."""
    from capstan.image.loader import probe_loader_path

    for name in ("ns", "ns/a"):
        assert cli("base", "import", probe_loader_path(), "--name", name).code == 0
    assert cli("rmi", "ns").code == 0
    assert cli("images", "-f", "value", "-c", "Name").out.split() == ["ns/a"]
    check(cli("rmi", "ns"), 65, "no such image: ns")
    assert cli("images", "-f", "value", "-c", "Name").out.split() == ["ns/a"]
