"""Supply chain: nothing is pulled unverified unless asked, manifests are covered too, and
``image sbom`` describes exactly what an image holds."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check

PROBE = probe_loader_path().read_bytes()


def _mpm(name: str, payload: bytes = b"hello") -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in (("/meta/package.yaml", f"name: {name}\n".encode()),
                           (f"/{name}/data", payload)):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory repository holding one package and one image, without any digest."""
    top = tmp_path / "bucket"
    (top / "packages").mkdir(parents=True)
    (top / "packages" / "osv.evil.yaml").write_text("name: osv.evil\n")
    (top / "packages" / "osv.evil.mpm").write_bytes(_mpm("osv.evil"))
    (top / "ns" / "img").mkdir(parents=True)
    (top / "ns" / "img" / "img.qemu").write_bytes(PROBE)
    (top / "ns" / "img" / "index.yaml").write_text("format_version: '1'\n")
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", top.as_uri())
    return top


def _digest(path: Path) -> None:
    Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _local(root: Path) -> list[str]:
    """The files of the local repository (images and packages), locks aside."""
    return sorted(p.relative_to(root).as_posix() for top in ("packages", "repository")
                  for p in (root / top).rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


def test_package_pull_without_digests_is_refused(cli, sandbox: Sandbox, bucket: Path) -> None:
    check(cli("package", "pull", "osv.evil"), 65, "publishes no SHA-256 digest")
    assert _local(sandbox.root) == []


def test_image_pull_without_digests_is_refused(cli, sandbox: Sandbox, bucket: Path) -> None:
    check(cli("pull", "ns/img"), 65, "--insecure")
    assert not (sandbox.root / "repository" / "ns" / "img" / "img.qemu").exists()


def test_a_digest_for_the_archive_alone_is_not_enough(cli, sandbox: Sandbox,
                                                      bucket: Path) -> None:
    _digest(bucket / "packages" / "osv.evil.mpm")
    check(cli("package", "pull", "osv.evil"), 65, "osv.evil.yaml")
    assert not (sandbox.root / "packages" / "osv.evil.yaml").exists()


def test_an_index_without_digest_is_refused(cli, sandbox: Sandbox, bucket: Path) -> None:
    _digest(bucket / "ns" / "img" / "img.qemu")
    check(cli("pull", "ns/img"), 65, "index.yaml")


def test_insecure_pulls_are_recorded_unverified(cli, sandbox: Sandbox, bucket: Path) -> None:
    result = cli("pull", "--insecure", "ns/img", "-f", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["Status"] == "downloaded (unverified)"
    index = sandbox.root / "repository" / "ns" / "img" / "index.yaml"
    assert "verified: false" in index.read_text()
    result = cli("package", "pull", "--insecure", "osv.evil", "-f", "json")
    assert result.code == 0, result.err
    stamp = sandbox.root / "packages" / "osv.evil.mpm.sha256"
    assert stamp.read_text().split()[1:] == ["unverified"]
    present = cli("package", "pull", "osv.evil", "-f", "json")
    assert json.loads(present.out)["SHA256"] == stamp.read_text().split()[0]


def test_verified_pulls_are_recorded_verified(cli, sandbox: Sandbox, bucket: Path) -> None:
    for path in (bucket / "ns" / "img" / "img.qemu", bucket / "ns" / "img" / "index.yaml"):
        _digest(path)
    result = cli("pull", "ns/img", "-f", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["Status"] == "downloaded"
    index = sandbox.root / "repository" / "ns" / "img" / "index.yaml"
    assert "verified: true" in index.read_text()


def test_push_publishes_manifest_digests_and_a_tampered_manifest_is_refused(
        cli, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "osv.tool.mpm"
    pkg.write_bytes(_mpm("osv.tool"))
    pkg.with_suffix(".yaml").write_text("name: osv.tool\n")
    loader = tmp_path / "loader.raw"
    loader.write_bytes(PROBE)
    assert cli("base", "import", loader, "--name", "me/loader").code == 0
    mirror = tmp_path / "mirror"
    assert cli("package", "push", pkg, mirror).code == 0
    assert cli("push", "me/loader", mirror).code == 0
    for key in ("packages/osv.tool.yaml", "packages/osv.tool.mpm", "me/loader/index.yaml",
                "me/loader/loader.qemu"):
        published = (mirror / f"{key}.sha256").read_text().split()[0]
        assert published == hashlib.sha256((mirror / key).read_bytes()).hexdigest()
    assert cli("rmi", "me/loader").code == 0
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", mirror.as_uri())
    (mirror / "packages" / "osv.tool.yaml").write_text("name: osv.tool\nrequire: [osv.evil]\n")
    check(cli("package", "pull", "osv.tool"), 65, "checksum mismatch")
    assert not (sandbox.root / "packages" / "osv.tool.yaml").exists()
    (mirror / "me" / "loader" / "index.yaml").write_text("description: swapped\n")
    check(cli("pull", "me/loader"), 65, "checksum mismatch")
    assert "swapped" not in "".join(p.read_text() for p in
                                    (sandbox.root / "repository").rglob("index.yaml"))
