"""Gap 2 of issue 17: Capstan's commands and flags that pycapstan lacked.

Capstan (reference 4.1): "``import`` | ``image-name image-file`` (exactly 2) | ``-v``
version, ``-c`` created, ``-d`` description, ``-b`` build command | Probes the file; the
format picks the suffix: qcow2 -> ``qemu``, VDI -> ``vbox``, VMDK -> ``vmware`` (not
``vmw``), unrecognised -> ``raw``; a ``gs://`` string or a gzip file is rejected
(``<file>: unsupported image format``) ... prints ``Importing <name>...`` and
``Importing into <path>`` ... writes ``index.yaml`` with ``format_version: "1"``."
[fix] 13 #44: VMDK stored as ``.vmw``, raw images runnable under QEMU (``.qemu``).

Capstan (4.6, 10.5): ``package update [substring]`` with ``--created``: "A package is
updated when the local or remote version is invalid ..., or when the remote version is
higher, or, with ``--created``, when either ``created`` is missing or the local one is
earlier." It prints "Updated N packages (out of M that were found locally)".
[fix] 13 #40: a package missing remotely is skipped, not a panic.

Capstan (3.1): "``help``/``h`` inside command groups ... print help";
(4.6) ``collect`` ``--remote``: "collect as compose-remote would: ``osv.compose-remote``
instead of ``osv.bootstrap``"; (4.2) ``build`` "with zero ... arguments the name is the
basename of the CWD, provided ``./Capstanfile`` parses; otherwise ``usage: capstan build
[image-name]`` (64)".
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from capstan.packages.manifest import Manifest
from capstan.services.updates import needs_update


def _stub_package(cli, tmp_path: Path, name: str, *, version: str = "",  # type: ignore
                  created: str = "", payload: str = "") -> Path:
    """Package *name* imported into the local repository; its directory."""
    pkg = tmp_path / "src" / name
    (pkg / "meta").mkdir(parents=True)
    text = f"name: {name}\ntitle: {name}\nauthor: t\n"
    text += f"version: '{version}'\n" if version else ""
    text += f"created: '{created}'\n" if created else ""
    (pkg / "meta" / "package.yaml").write_text(text)
    (pkg / f"{name}.txt").write_text(payload or name)
    assert cli("package", "import", "-C", pkg).code == 0
    return pkg


def _publish(cli, pkg: Path, remote: Path) -> None:  # type: ignore[no-untyped-def]
    """*pkg* built and pushed to the directory repository *remote*."""
    name = yaml.safe_load((pkg / "meta" / "package.yaml").read_text())["name"]
    out = pkg.parent / "out"
    out.mkdir(exist_ok=True)
    assert cli("package", "build", "-C", pkg, "-o", out / f"{name}.mpm").code == 0
    (out / f"{name}.yaml").write_text((pkg / "meta" / "package.yaml").read_text())
    assert cli("package", "push", out / f"{name}.mpm", remote.as_uri()).code == 0


# -- import ----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "suffix"), [
    ("qcow2", "qemu"), ("vdi", "vbox"), ("vmdk", "vmw"), ("raw", "qemu")])
def test_import_picks_the_suffix_by_format(cli, tmp_path: Path, capstan_root: Path,
                                           fmt: str, suffix: str) -> None:
    image = tmp_path / f"disk.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image), "1M"], check=True)
    result = cli("import", "me/disk", image, "-v", "1.2", "-d", "my disk", "-b", "make")
    assert result.code == 0, result
    assert result.out.startswith("Importing me/disk...\nImporting into ")
    stored = capstan_root / "repository" / "me" / "disk" / f"disk.{suffix}"
    assert stored.read_bytes() == image.read_bytes()
    index = yaml.safe_load((capstan_root / "repository/me/disk/index.yaml").read_text())
    assert {k: index[k] for k in ("format_version", "version", "description", "build")} == \
        {"format_version": "1", "version": "1.2", "description": "my disk", "build": "make"}
    assert index["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


def test_import_refuses_what_capstan_refuses(cli, tmp_path: Path) -> None:
    gz = tmp_path / "disk.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 60)
    result = cli("import", "x", gz)
    assert result.code == 65 and "unsupported image format" in result.err
    assert cli("import", "x").code == 64  # exactly two arguments
    assert cli("import", "x", tmp_path / "missing").code == 65


# -- package update ----------------------------------------------------------------


def _m(version: str = "", created: str = "") -> Manifest:
    return Manifest("p", "P", "a", version, created=created)


@pytest.mark.parametrize(("local", "remote", "by_created", "why"), [
    (_m("1.2"), _m("1.2.0"), False, None),  # 1.2 equals 1.2.0
    (_m("1.9"), _m("1.10"), False, "newer version"),  # 1.10 > 1.9
    (_m("2.0"), _m("1.9"), False, None),
    (_m("latest"), _m("1.0"), False, "unknown version"),  # invalid: always updated
    (_m("1.0"), _m(""), False, "unknown version"),
    (_m("1.0", "2017-09-14T18:08:00Z"), _m("1.0", "2017-09-15T00:00:00Z"), True,
     "created later"),
    (_m("1.0", "2017-09-14T18:08:00Z"), _m("1.0", "2017-09-15T00:00:00Z"), False, None),
    (_m("1.0", "2017-09-15T00:00:00Z"), _m("1.0", "2017-09-14T18:08:00Z"), True, None),
    (_m("1.0"), _m("1.0", "2017-09-14 18:08"), True, "unknown created time"),
])
def test_update_rules(local: Manifest, remote: Manifest, by_created: bool,
                      why: str | None) -> None:
    assert needs_update(local, remote, by_created=by_created) == why


def test_package_update_pulls_only_newer(cli, tmp_path: Path, capstan_root: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", remote.as_uri())
    _stub_package(cli, tmp_path / "old", "p.same", version="1.0")
    _stub_package(cli, tmp_path / "old", "p.new", version="1.0", payload="old")
    _stub_package(cli, tmp_path / "old", "p.local", version="1.0")
    _publish(cli, _stub_package(cli, tmp_path / "r1", "p.same", version="1.0"), remote)
    _publish(cli, _stub_package(cli, tmp_path / "r2", "p.new", version="1.1",
                                payload="new"), remote)
    _stub_package(cli, tmp_path / "old2", "p.new", version="1.0", payload="old")  # back
    result = cli("package", "update", "-f", "value")
    assert result.code == 0, result
    assert result.out.splitlines() == [
        "p.local 1.0  not in any remote repository",
        "p.new 1.0 1.1 updated (newer version)",
        "p.same 1.0 1.0 already latest"]
    assert "Updated 1 packages (out of 3 that were found locally)" in result.err
    with tarfile.open(capstan_root / "packages" / "p.new.mpm") as tar:
        member = tar.extractfile("/p.new.txt")
        assert member is not None and member.read() == b"new"
    only = cli("package", "update", "same", "-f", "value")
    assert only.out.splitlines() == ["p.same 1.0 1.0 already latest"]


# -- help, unknown commands, build, collect --remote -----------------------------------


def test_group_help_and_unknown_subcommands(cli) -> None:  # type: ignore[no-untyped-def]
    shown = cli("package", "help", "compose")
    assert shown.code == 0 and " package compose [-h]" in shown.out.splitlines()[0]
    assert cli("package", "h", "compose").out == shown.out
    listing = cli("package", "help")
    assert listing.code == 0 and "package compose" in listing.out
    for argv, typed in ((("package", "frobnicate"), "package frobnicate"),
                        (("package", "help", "frobnicate"), "package frobnicate"),
                        (("frobnicate", "now"), "frobnicate")):
        result = cli(*argv)
        assert result.code == 64
        assert result.err == f"capstan: '{typed}' is not a capstan command; see " \
                             "'capstan --help'\n"


def test_bare_build_without_capstanfile_is_a_usage_error(cli, tmp_path: Path,  # type: ignore
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("build")
    assert result.code == 64
    assert result.err.startswith("capstan: usage: capstan build [image-name]")


def _tar_package(name: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in {"/meta/package.yaml":
                           f"name: {name}\ntitle: {name}\nauthor: t\n".encode(),
                           **files}.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_collect_remote_uses_compose_remote(cli, tmp_path: Path,  # type: ignore
                                            capstan_root: Path) -> None:
    packages = capstan_root / "packages"
    packages.mkdir()
    for name in ("osv.bootstrap", "osv.compose-remote"):
        (packages / f"{name}.mpm").write_bytes(_tar_package(name, {f"/{name}": b"x"}))
        (packages / f"{name}.yaml").write_text(f"name: {name}\ntitle: {name}\nauthor: t\n")
    app = tmp_path / "app"
    (app / "meta").mkdir(parents=True)
    (app / "meta" / "package.yaml").write_text("name: app\ntitle: App\nauthor: t\n")
    assert cli("package", "collect", "-C", app).code == 0
    assert (app / "mpm-pkg" / "osv.bootstrap").exists()
    assert cli("package", "collect", "--remote", "-C", app).code == 0
    assert (app / "mpm-pkg" / "osv.compose-remote").exists()
    assert not (app / "mpm-pkg" / "osv.bootstrap").exists()
