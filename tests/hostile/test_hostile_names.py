"""Hostile names: every package, image, instance, volume and fleet name is checked by one
validator wherever it comes from (command line: exit 64; files and remotes: exit 65), and
none ever writes outside ``$CAPSTAN_ROOT`` or splits a listing's rows."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core.errors import InputError, UsageError
from capstan.core.names import check_name, is_valid
from capstan.image.loader import probe_loader_path

from hostile_kit import Sandbox, check
from repo_server import RepoServer

ESCAPES = ["../../outside/dir/evil", "..", ".", "a/../../b", "/abs", "a\nb", "a b", "a\tb",
           "-rf", ".hidden", "a\x00b", "a\x1b[2Jb", "", "x" * 300, "a\\b", "caf\u00e9",
           "a\u202eb"]


def manifest(name: str, require: list[str] | None = None) -> bytes:
    req = f"require: {json.dumps(require)}\n" if require else ""
    return f"name: {json.dumps(name)}\ntitle: t\nauthor: a\n{req}".encode()


def mpm(name: str, require: list[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in (("/meta/package.yaml", manifest(name, require)),
                           (f"/{name}.txt", b"x")):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def signed(files: dict[str, bytes]) -> dict[str, bytes]:
    """*files* with the ``<key>.sha256`` digest a bucket publishes beside each."""
    return {**files, **{f"{k}.sha256": f"{hashlib.sha256(v).hexdigest()}  x\n".encode()
                        for k, v in files.items()}}


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    """An HTTP bucket (S3 listing) the attacker controls, as the only remote."""
    with RepoServer() as srv:
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"{srv.url}/bucket/")
        yield srv


def package_dir(tmp_path: Path, name: str = "app", require: list[str] | None = None) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_bytes(manifest(name, require))
    (pkg / "hello").write_text("hi")
    return pkg


# -- the validator ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["osv.bootstrap", "node-4.4.1", "openjdk8-zulu-compact1",
                                  "app.mysql-5.6.21", "python-2.7", "g++", "osv-loader"])
def test_capstan_package_names_stay_valid(name: str) -> None:
    assert check_name(name, "package") == name and is_valid(name, "image")


@pytest.mark.parametrize("name", ["cloudius/osv-base", "mike/osv-loader", "a/b/c"])
def test_image_namespaces_are_valid_only_for_images(name: str) -> None:
    assert check_name(name, "image") == name
    for kind in ("package", "instance", "volume", "fleet"):
        assert not is_valid(name, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ESCAPES)
def test_hostile_names_are_refused_for_every_kind(name: str) -> None:
    for kind in ("package", "image", "instance", "volume", "fleet"):
        with pytest.raises(UsageError) as err:
            check_name(name, kind)  # type: ignore[arg-type]
        assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
        with pytest.raises(InputError, match=r"^f\.yaml: invalid"):
            check_name(name, kind, "f.yaml")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["package", "image", "instance", "volume",
                                               "fleet"]))
def test_property_a_valid_name_is_a_plain_path_below_its_parent(name: str, kind: str) -> None:
    try:
        checked = check_name(name, kind)  # type: ignore[arg-type]
    except UsageError as err:
        assert err.exit_code == 64 and "\n" not in str(err) and len(str(err)) < 300
        return
    root = Path("/r/packages")
    assert (root / checked).resolve().is_relative_to(root)
    assert checked.isascii() and checked.isprintable() and " " not in checked
    assert not any(seg.startswith((".", "-")) for seg in checked.split("/"))
    assert kind == "image" or "/" not in checked


# -- names from files and remotes ---------------------------------------------------------


def test_bucket_manifest_require_cannot_write_outside(cli, sandbox: Sandbox, tmp_path: Path,
                                                      bucket: RepoServer) -> None:
    evil = "../../outside/dir/evil"
    bucket.state.bucket = signed({
        "packages/osv.bootstrap.yaml": manifest("osv.bootstrap"),
        "packages/osv.bootstrap.mpm": mpm("osv.bootstrap"),
        "packages/dep.yaml": manifest("dep", [evil]),
        "packages/dep.mpm": mpm("dep", [evil]),
        f"packages/{evil}.yaml": manifest("evil"),
        f"packages/{evil}.mpm": mpm("evil"),
    })
    pkg = package_dir(tmp_path, require=["dep"])
    check(cli("package", "collect", "-p", "-C", pkg), 65, "invalid package name")
    assert not list(sandbox.outside.rglob("evil*"))


def test_package_yaml_name_cannot_steer_import_outside(cli, sandbox: Sandbox,
                                                       tmp_path: Path) -> None:
    pkg = package_dir(tmp_path, name="../../outside/dir/x")
    check(cli("package", "import", "-C", pkg), 65, "name: invalid package name")
    assert not list((sandbox.root).rglob("*.mpm"))


def test_package_yaml_name_cannot_steer_build_outside(cli, sandbox: Sandbox,
                                                      tmp_path: Path) -> None:
    pkg = package_dir(tmp_path, name="../outside/dir/x")
    check(cli("package", "build", "-C", pkg), 65, "invalid package name")
    assert not list(tmp_path.rglob("*.mpm"))


def test_package_yaml_require_is_checked(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    pkg = package_dir(tmp_path, require=["ok", "../../outside/victim"])
    check(cli("package", "collect", "-C", pkg), 65, "require: invalid package name")


def test_remote_listing_with_bad_names_is_skipped(cli, sandbox: Sandbox,
                                                  bucket: RepoServer) -> None:
    bucket.state.bucket = {
        "packages/good.yaml": manifest("good"), "packages/good.mpm": mpm("good"),
        "packages/../../outside/victim.yaml": b"x",
        "packages/bad\nrow.yaml": b"x",
        "evil\nrow/index.yaml": b"x",
        "ns/img/index.yaml": b"x",
    }
    result = cli("search", "-f", "value")
    assert result.code == 0, result.err
    rows = sorted(result.out.splitlines())
    assert [r.split()[:2] for r in rows] == [["image", "ns/img"], ["package", "good"]]
    assert "skipping" in result.err


def test_image_name_with_a_newline_never_splits_images(cli, sandbox: Sandbox,
                                                       capstan_root: Path) -> None:
    probe = probe_loader_path().read_bytes()
    for name in ("good", "evil\nrow"):
        (capstan_root / "repository" / name).mkdir(parents=True)
        (capstan_root / "repository" / name / f"{name}.qemu").write_bytes(probe)
    result = cli("images", "-f", "value", "-c", "Name")
    assert result.code == 0 and result.out.splitlines() == ["good"], result
    check(cli("compose", "-l", "probe-loader", "-c", "/x", "evil\nrow", str(sandbox.outside)),
          64, "invalid image name 'evil\\nrow'")


def test_fleet_file_names(cli, sandbox: Sandbox, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for text, message in [("name: ../../outside\nservices: {a: {image: x}}\n", "fleet name"),
                          ("services: {'../x': {image: x}}\n", "invalid service name"),
                          ("name: 'a\\nb'\nservices: {a: {image: x}}\n", "fleet name")]:
        (tmp_path / "capstan-fleet.yaml").write_text(text)
        check(cli("up", "--dry-run"), 65, message)


# -- names on the command line ------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("pull", "../../outside/dir"),
    ("pull", "ns/../../x"),
    ("rmi", "../outside"),
    ("package", "pull", "../../outside/dir/evil"),
    ("package", "delete", "../../outside/victim"),
    ("package", "describe", "../../outside/victim"),
    ("package", "push", "../x", "/nowhere"),
    ("push", "../x", "/nowhere"),
    ("base", "import", "/dev/null", "--name", "../../outside/x"),
    ("package", "init", "--name", "../x", "--title", "t", "--author", "a"),
    ("package", "init", "--name", "x", "--title", "t", "--author", "a", "--require", "a b"),
    ("volume", "create", "../../outside/x"),
    ("volume", "delete", "../../outside/victim"),
    ("delete", "../x"),
    ("stop", "a\nb"),
    ("run", "-i", "probe-loader", "../../x", "--dry-run"),
    ("build", "../../outside/x"),
    ("package", "compose", "a b"),
])
def test_command_line_names_are_usage_errors(cli, sandbox: Sandbox, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             argv: tuple[str, ...]) -> None:
    monkeypatch.chdir(package_dir(tmp_path))
    check(cli(*argv), 64, "name")
    assert not (sandbox.root / "packages").exists()
