"""Gap 5 of issue 17: anonymous packages, and the README in ``package describe``.

Capstan (reference 6.2): "``package compose``, ``collect`` and ``compose-remote`` fall
back to a default manifest when the file is missing (``Manifest file ... does not
exist. Assuming default manifest``): name ``App``, title ``App``, author
``Anonymous``. ``package build``, ``import`` and ``run`` require the file."
(4.6) ``describe`` prints "``PACKAGE DOCUMENTATION`` with ``meta/README.md`` when
present"; (8) "every other ``meta/...`` member is skipped (so ``meta/package.yaml``,
``meta/README.md`` never reach the image)".
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest


def _bootstrap(root: Path) -> None:
    """A stub ``osv.bootstrap`` in the local repository."""
    packages = root / "packages"
    packages.mkdir(exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in (("/meta/package.yaml",
                            b"name: osv.bootstrap\ntitle: B\nauthor: t\n"),
                           ("/etc/hosts", b"127.0.0.1 localhost\n")):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (packages / "osv.bootstrap.mpm").write_bytes(buf.getvalue())
    (packages / "osv.bootstrap.yaml").write_text("name: osv.bootstrap\ntitle: B\nauthor: t\n")


def test_a_directory_without_a_manifest_composes_as_capstans_anonymous_package(
        cli, tmp_path: Path, capstan_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    _bootstrap(capstan_root)
    app = tmp_path / "plain"
    app.mkdir()
    (app / "hello.txt").write_text("hi\n")
    assert cli("package", "collect", "-C", app).code == 0
    assert (app / "mpm-pkg" / "hello.txt").read_text() == "hi\n"
    assert (app / "mpm-pkg" / "etc" / "hosts").is_file()
    assert "default manifest (package App by Anonymous)" in caplog.text
    out = tmp_path / "plain.qcow2"
    result = cli("package", "compose", "-C", app, "-o", out, "-l", "probe-loader",
                 "--run", "/hello.txt", "-f", "json")
    assert result.code == 0, result
    assert json.loads(result.out)["Packages"] == "osv.bootstrap"
    listed = cli("image", "ls", out, "/")
    assert "hello.txt" in listed.out and "meta" not in listed.out.split()


def test_build_and_import_still_require_the_manifest(cli, tmp_path: Path) -> None:
    app = tmp_path / "plain"
    app.mkdir()
    for argv in (("package", "build", "-C", app), ("package", "import", "-C", app)):
        result = cli(*argv)
        assert result.code == 65 and "no meta/package.yaml" in result.err


def test_describe_prints_the_readme(cli, tmp_path: Path) -> None:
    pkg = tmp_path / "doc"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: doc\ntitle: Doc\nauthor: t\n")
    (pkg / "meta" / "README.md").write_text("# Doc\n\nRun it with `capstan run`.\n"
                                            "\x1b[2J no escapes\n")
    (pkg / "data").write_text("x")
    assert cli("package", "import", "-C", pkg).code == 0
    shown = json.loads(cli("package", "describe", "doc", "-f", "json").out)
    assert shown["PACKAGE DOCUMENTATION"].splitlines() == [
        "# Doc", "", "Run it with `capstan run`.", "\\x1b[2J no escapes"]
    assert shown["Files"] == 1  # meta/ is not content
    table = cli("package", "describe", "doc").out
    assert "PACKAGE DOCUMENTATION" in table and "\x1b" not in table
    assert "| Run it with `capstan run`." in table  # one table line per README line
    (pkg / "meta" / "README.md").unlink()
    assert cli("package", "import", "-C", pkg).code == 0
    assert json.loads(cli("package", "describe", "doc", "-f", "json").out)[
        "PACKAGE DOCUMENTATION"] == ""
