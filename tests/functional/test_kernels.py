"""A kernel as a repository artefact: base import --kernel and pull -p kernel, then run
--kernel NAME boots it (the probe kernel under QEMU microvm, TCG)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.image.loader import probe_kernel_path

from repo_server import Release, RepoServer

pytestmark = pytest.mark.qemu

KERNEL = probe_kernel_path().read_bytes()


@pytest.fixture
def kernel_less(cli, app_tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", out, app_tree).code == 0
    return out


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    with RepoServer() as srv:
        srv.state.releases = [Release("v0.57.0", {
            "osv-loader.qemu.x86_64": b"not this one",
            "osv-loader-stripped.elf.x86_64.gz": gzip.compress(KERNEL, mtime=0)})]
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", "github")
        monkeypatch.setenv("CAPSTAN_GITHUB_API", f"{srv.url}/api")
        monkeypatch.setenv("CAPSTAN_GITHUB_REPO", "osv/test")
        yield srv


def _boots(cli, image: Path, kernel: str) -> None:  # type: ignore[no-untyped-def]
    done = cli.program("run", "-i", image, "--kernel", kernel, "-m", "64M", "-c", "1", "--rm",
                       "k")
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--nopci --rootfs=rofs runscript /run/default;" in done.stdout


def test_base_import_kernel_then_run(cli, kernel_less: Path, capstan_root: Path) -> None:
    done = cli("base", "import", probe_kernel_path(), "--name", "kernels/probe", "--kernel",
               "-f", "json")
    assert done.code == 0, done.err
    row = json.loads(done.out)
    stored = capstan_root / "repository" / "kernels" / "probe" / "probe.kernel"
    assert (row["Kind"], row["Status"], row["Path"]) == ("kernel", "imported", str(stored))
    assert stored.read_bytes() == KERNEL
    _boots(cli, kernel_less, "kernels/probe")


def test_pull_kernel_then_run(cli, server: RepoServer, kernel_less: Path,
                              capstan_root: Path) -> None:
    done = cli("pull", "osv-loader", "-p", "kernel", "-f", "json")
    assert done.code == 0, done.err
    row = json.loads(done.out)
    assert row["Status"] == "downloaded" and row["Source"].endswith("v0.57.0")
    stored = capstan_root / "repository" / "osv-loader" / "osv-loader.kernel"
    assert stored.read_bytes() == KERNEL
    _boots(cli, kernel_less, "osv-loader")


def test_a_kernel_and_an_image_of_one_name_keep_their_own_digests(
        cli, kernel_less: Path, capstan_root: Path) -> None:
    import yaml

    index = capstan_root / "repository" / "both" / "index.yaml"
    assert cli("import", "both", kernel_less).code == 0
    image_digest = yaml.safe_load(index.read_text())["sha256"]
    assert cli("base", "import", probe_kernel_path(), "--name", "both", "--kernel").code == 0
    meta = yaml.safe_load(index.read_text())
    assert meta["sha256"] == image_digest  # the kernel did not overwrite the image's record
    kernel_digest = meta["kernel"]["sha256"]
    assert kernel_digest != image_digest
    assert cli("import", "both", kernel_less).code == 0  # and an image not the kernel's
    assert yaml.safe_load(index.read_text())["kernel"]["sha256"] == kernel_digest
    rows = json.loads(cli("images", "-f", "json").out)
    assert [r["SHA256"] for r in rows if r["Name"] == "both"] == [image_digest]
    _boots(cli, kernel_less, "both")
