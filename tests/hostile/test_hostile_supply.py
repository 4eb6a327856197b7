"""Supply chain: nothing is pulled unverified unless asked, manifests are covered too, and
``image sbom`` describes exactly what an image holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check
from repo_server import mpm

PROBE = probe_loader_path().read_bytes()


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory repository holding one package and one image, without any digest."""
    top = tmp_path / "bucket"
    (top / "packages").mkdir(parents=True)
    (top / "packages" / "osv.evil.yaml").write_text("name: osv.evil\n")
    (top / "packages" / "osv.evil.mpm").write_bytes(mpm("osv.evil"))
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
    pkg.write_bytes(mpm("osv.tool"))
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


# -- SBOM -----------------------------------------------------------------------------


def _validate(text: str) -> dict:  # type: ignore[type-arg]
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    return json.loads(text)  # type: ignore[no-any-return]


def _components(doc: dict, kind: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["name"]: c for c in doc.get("components", []) if c["type"] == kind}


def _sha(component: dict) -> str:  # type: ignore[type-arg]
    (digest,) = [h["content"] for h in component["hashes"] if h["alg"] == "SHA-256"]
    return digest  # type: ignore[no-any-return]


def test_sbom_lists_every_file_with_its_digest(cli, sandbox: Sandbox, app_tree: Path,
                                               tmp_path: Path) -> None:
    assert cli("compose", "-l", "probe-loader", "ns/app", app_tree).code == 0
    image = sandbox.root / "repository" / "ns" / "app" / "app.qemu"
    out = tmp_path / "app.cdx.json"
    result = cli("image", "sbom", "ns/app", "-o", out, "-f", "json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    doc = _validate(out.read_text())
    assert _sha(doc["metadata"]["component"]) == summary["sha256"] == \
        hashlib.sha256(image.read_bytes()).hexdigest()
    files = _components(doc, "file")
    listed = cli("image", "ls", "-f", "value", "-c", "Path", "-c", "Type", "-R", "ns/app")
    assert {line.split()[0] for line in listed.out.splitlines() if line.endswith(" file")} \
        == set(files) and summary["files"] == len(files)
    for path in ("/hello", "/lib/libfoo.so", "/lib/zero", "/run/default"):
        host = app_tree / path.lstrip("/")
        assert _sha(files[path]) == hashlib.sha256(host.read_bytes()).hexdigest()
    images = json.loads(cli("images", "-f", "json").out)
    assert [r["SHA256"] for r in images if r["Name"] == "ns/app"] == [summary["sha256"]]


def test_sbom_takes_packages_from_a_lock(cli, sandbox: Sandbox, image: Path,
                                         tmp_path: Path) -> None:
    digest = hashlib.sha256(b"pkg").hexdigest()
    lock = tmp_path / "capstan.lock"
    lock.write_text(f"lock_version: 1\npackages:\n  osv.nginx: {{version: '1.25', "
                    f"sha256: {digest}}}\n  osv.bootstrap: {{version: '', sha256: {digest}}}\n")
    out = tmp_path / "s.json"
    assert cli("image", "sbom", image, "--lock", lock, "-o", out).code == 0
    doc = _validate(out.read_text())
    packages = _components(doc, "library")
    assert set(packages) == {"osv.nginx", "osv.bootstrap"}
    assert packages["osv.nginx"]["version"] == "1.25" and _sha(packages["osv.nginx"]) == digest
    assert packages["osv.nginx"]["purl"] == "pkg:generic/osv.nginx@1.25"
    (dep,) = [d for d in doc["dependencies"] if d["ref"] == doc["metadata"]["component"]
              ["bom-ref"]]
    assert {d for d in dep["dependsOn"]} == {"package:osv.nginx", "package:osv.bootstrap"}


@pytest.mark.parametrize("lock_text, text", [
    ("packages: {osv.x: {version: '1', sha256: 'not-a-digest'}}\n", "SHA-256"),
    ("packages: [osv.x]\n", "not a capstan.lock"),
    ("packages: {osv.x: {sha256: a}}\npackages: {}\n", "duplicate key"),
    ("[unclosed\n", "capstan.lock"),
])
def test_sbom_refuses_a_bad_lock(cli, sandbox: Sandbox, image: Path, tmp_path: Path,
                                 lock_text: str, text: str) -> None:
    lock = tmp_path / "capstan.lock"
    lock.write_text(lock_text)
    out = tmp_path / "s.json"
    check(cli("image", "sbom", image, "--lock", lock, "-o", out), 65, text)
    assert not out.exists()


def test_sbom_of_something_that_is_no_image(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    fake = tmp_path / "fake.qemu"
    fake.write_bytes(b"\0" * 4096)
    check(cli("image", "sbom", fake, "-o", tmp_path / "s.json"), 65, "not an OSv image")
    check(cli("image", "sbom", sandbox.victim, "-o", sandbox.outside / "s.json"), 65, "")
    assert not (tmp_path / "s.json").exists()


def _stub(cli, top: Path, name: str, require: tuple[str, ...] = ()) -> None:  # type: ignore
    pkg = top / name
    (pkg / "meta").mkdir(parents=True)
    req = "".join(f"  - {r}\n" for r in require)
    (pkg / "meta" / "package.yaml").write_text(
        f"name: {name}\ntitle: {name}\nauthor: t\nversion: '2.0'\n"
        + (f"require:\n{req}" if req else ""))
    (pkg / f"{name}.txt").write_text(name)
    assert cli("package", "import", "-C", pkg).code == 0


def test_sbom_of_a_package_compose_names_its_packages(cli, sandbox: Sandbox,
                                                      tmp_path: Path) -> None:
    _stub(cli, tmp_path / "stubs", "osv.bootstrap")
    _stub(cli, tmp_path / "stubs", "lib.one")
    app = tmp_path / "app"
    (app / "meta").mkdir(parents=True)
    (app / "meta" / "package.yaml").write_text("name: app\ntitle: app\nauthor: t\n"
                                               "require:\n  - lib.one\n")
    (app / "run").mkdir()
    (app / "run" / "default").write_text("/lib.one.txt")
    result = cli("package", "compose", "-C", app, "-l", "probe-loader", "ns/pkgapp")
    assert result.code == 0, result.err
    out = tmp_path / "s.json"
    assert cli("image", "sbom", "ns/pkgapp", "-o", out).code == 0
    packages = _components(_validate(out.read_text()), "library")
    assert set(packages) >= {"osv.bootstrap", "lib.one"}
    mpm = sandbox.root / "packages" / "lib.one.mpm"
    assert packages["lib.one"]["version"] == "2.0"
    assert _sha(packages["lib.one"]) == hashlib.sha256(mpm.read_bytes()).hexdigest()
    locked = tmp_path / "l.json"
    assert cli("image", "sbom", "ns/pkgapp", "--lock", app / "capstan.lock", "-o",
               locked).code == 0
    assert _components(_validate(locked.read_text()), "library") == packages
