"""Gap 8 of issue 17: files go both ways between Go Capstan and pycapstan.

Fixtures are written to Capstan's formats as the reference gives them, and what we
write is checked against what Capstan's readers need:

- (8) "A gzip-compressed tar archive. Readers also accept a plain tar ... member names
  = the path relative to the package root with a leading ``/``; directories end in
  ``/``; the root directory itself is the member ``/``".
- (6.2) manifests are written "in this key order: ``name``, ``title``, ``author``,
  ``version``, ``require``, ``binary``, ``created``, ``platform``" with ``created`` "a
  quoted RFC 3339 string".
- (6.10) ``index.yaml``: ``format_version: "1"``, ``version``, ``created`` (``YYYY-MM-DD
  HH:MM`` from Capstan's compose), ``description``, ``build``.
- (7) "``repository/<name>/<last segment of name>.<hyp>``", "``packages/<pkg>.mpm``
  + ``packages/<pkg>.yaml``"; ``import`` wrote VMDK as ``.vmware`` and raw as ``.raw``.
- (6.3) ``run.yaml`` top-level keys ``runtime``, ``config_set``, ``config_set_default``.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from capstan.packages.templates import run_template

CAPSTAN_MANIFEST_ORDER = ["name", "title", "author", "version", "require", "binary",
                          "created", "platform"]

# -- what we write, as Capstan reads it ----------------------------------------------


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "com.example.hello"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "public").mkdir()
    (pkg / "meta" / "package.yaml").write_text(
        "name: com.example.hello\ntitle: Hello service\nauthor: Alice <a@example.org>\n"
        "version: 1.2.0\nrequire:\n  - osv.cli\nplatform: Debian 12\n"
        "created: '2023-05-22T10:15:00+02:00'\n")
    (pkg / "meta" / "run.yaml").write_text(run_template("native"))
    (pkg / "server.js").write_text("// hi\n")
    (pkg / "public" / "index.html").write_text("<p>hi</p>\n")
    (pkg / "current").symlink_to("public")
    return pkg


def test_our_mpm_is_capstans_format(cli, tmp_path: Path, capstan_root: Path) -> None:
    assert cli("package", "import", "-C", _package(tmp_path)).code == 0
    archive = capstan_root / "packages" / "com.example.hello.mpm"
    assert archive.read_bytes()[:2] == b"\x1f\x8b"  # gzip, which Capstan tries first
    names = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True,
                           check=True).stdout.splitlines()  # as stored (tarfile strips "/")
    assert names[0] == "/" and all(name.startswith("/") for name in names)
    assert {"/meta/", "/public/", "/meta/package.yaml", "/meta/run.yaml", "/server.js",
            "/public/index.html", "/current"} <= set(names)
    with tarfile.open(archive, "r:gz") as tar:
        link = tar.getmember("/current")
    assert link.issym() and link.linkname == "public"


def test_our_manifests_are_capstans(cli, tmp_path: Path, capstan_root: Path) -> None:
    assert cli("package", "import", "-C", _package(tmp_path)).code == 0
    text = (capstan_root / "packages" / "com.example.hello.yaml").read_text()
    data = yaml.safe_load(text)
    keys = [k for k in data if k in CAPSTAN_MANIFEST_ORDER]
    assert keys == [k for k in CAPSTAN_MANIFEST_ORDER if k in data] == list(data)
    assert data["require"] == ["osv.cli"] and data["version"] == "1.2.0"
    assert "created: '2023-05-22T10:15:00+02:00'" in text  # a quoted RFC 3339 string
    assert (capstan_root / "packages" / "com.example.hello.mpm").is_file()


def test_our_index_yaml_and_layout_are_capstans(cli, tmp_path: Path,
                                                capstan_root: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    assert cli("import", "mike/osv-loader", image, "-v", "0.57", "-d", "loader").code == 0
    folder = capstan_root / "repository" / "mike" / "osv-loader"
    assert (folder / "osv-loader.qemu").is_file()  # <name>/<last segment>.<hyp>
    text = (folder / "index.yaml").read_text()
    index = yaml.safe_load(text)
    assert "format_version: '1'" in text  # a string, as Capstan's struct has it
    assert all(isinstance(index[k], str) for k in ("format_version", "version", "created",
                                                    "description", "build"))


def test_our_run_yaml_keys_are_capstans() -> None:
    for runtime in ("native", "node", "java", "python"):
        assert set(yaml.safe_load(run_template(runtime))) == {"runtime", "config_set",
                                                              "config_set_default"}


# -- what Capstan writes, as we read it ----------------------------------------------


def _capstan_mpm(*, compressed: bool = True) -> bytes:
    """An archive as Capstan's ``package build`` writes it: host uid/gid and names, the
    root member, every directory, leading ``/`` (reference 8's example listing)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        def add(name: str, data: bytes | None = None, link: str | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.uname, info.gname = 1000, 1000, "alice", "alice"
            info.mtime = 1684750500
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
            else:
                info.size, info.mode = len(data or b""), 0o644
            tar.addfile(info, io.BytesIO(data or b"") if data is not None else None)

        add("/")
        add("/meta/")
        add("/meta/package.yaml", b"name: com.example.hello\ntitle: Hello service\n"
            b"author: Alice\nversion: 1.2.0\ncreated: \"2023-05-22T10:15:00+02:00\"\n")
        add("/meta/run.yaml", b"runtime: native\nconfig_set:\n  web:\n"
            b"    bootcmd: /server.so --port $PORT\n    env:\n      PORT: 8000\n"
            b"config_set_default: web\n")
        add("/meta/README.md", b"Hello.\n")
        add("/server.so", b"\x7fELF")
        add("/public/")
        add("/public/index.html", b"<p>hi</p>\n")
        add("/current", link="public")
    return gzip.compress(raw.getvalue(), mtime=0) if compressed else raw.getvalue()


@pytest.mark.parametrize("compressed", [True, False])
def test_capstans_packages_are_read(cli, tmp_path: Path, capstan_root: Path,
                                    compressed: bool) -> None:
    packages = capstan_root / "packages"
    packages.mkdir()
    (packages / "com.example.hello.mpm").write_bytes(_capstan_mpm(compressed=compressed))
    (packages / "com.example.hello.yaml").write_text(  # Capstan's re-serialisation
        'name: com.example.hello\ntitle: Hello service\nauthor: Alice\nversion: 1.2.0\n'
        'created: "2023-05-22T10:15:00+02:00"\nplatform: Ubuntu 19.04\n')
    listed = json.loads(cli("package", "list", "-f", "json").out)
    assert listed == [{"Name": "com.example.hello", "Description": "Hello service",
                       "Version": "1.2.0", "Created": "2023-05-22 10:15",
                       "Platform": "Ubuntu 19.04", "Requires": ""}]
    shown = json.loads(cli("package", "describe", "com.example.hello", "-f", "json").out)
    assert shown["Boot"] == "web: --env=PORT?=8000 /server.so --port $PORT"
    assert shown["PACKAGE DOCUMENTATION"] == "Hello."
    (packages / "osv.bootstrap.mpm").write_bytes(_capstan_mpm())  # any package will do
    (packages / "osv.bootstrap.yaml").write_text("name: osv.bootstrap\ntitle: B\nauthor: a\n")
    app = tmp_path / "app"
    (app / "meta").mkdir(parents=True)
    (app / "meta" / "package.yaml").write_text(
        "name: app\ntitle: App\nauthor: me\nrequire:\n- com.example.hello\n")
    assert cli("package", "collect", "-C", app).code == 0
    tree = app / "mpm-pkg"
    assert (tree / "public" / "index.html").read_text() == "<p>hi</p>\n"
    assert (tree / "current").is_symlink() and not (tree / "meta").exists()
    assert (tree / "run" / "web").read_text() == "--env=PORT?=8000 /server.so --port $PORT"


def test_capstans_repository_is_listed(cli, capstan_root: Path) -> None:
    repo = capstan_root / "repository"
    for name, suffix, index in (
            ("cloudius/osv-base", "qemu",  # Capstan's compose: local time, unquoted
             'format_version: "1"\nversion: ""\ncreated: 2023-05-22 10:15\n'
             'description: ""\nbuild: ""\n'),
            ("mine", "vmware",  # Capstan's import of a VMDK, -c verbatim
             'format_version: "1"\nversion: "1"\ncreated: 2017-09-14T18:08:00+02:00\n'
             'description: "a vmdk"\nbuild: ""\n'),
            ("rawdisk", "raw", None)):  # Capstan's import of a raw file; no index
        folder = repo / name
        folder.mkdir(parents=True)
        (folder / f"{name.rsplit('/', 1)[-1]}.{suffix}").write_bytes(b"\0" * 512)
        if index:
            (folder / "index.yaml").write_text(index)
    rows = {r["Name"]: r for r in json.loads(cli("images", "-f", "json").out)}
    assert rows["cloudius/osv-base"]["Created"] == "2023-05-22 10:15"
    assert (rows["mine"]["Hypervisor"], rows["mine"]["Created"],
            rows["mine"]["Description"]) == ("vmware", "2017-09-14 18:08", "a vmdk")
    assert (rows["rawdisk"]["Hypervisor"], rows["rawdisk"]["Created"]) == ("raw", "N/A")
