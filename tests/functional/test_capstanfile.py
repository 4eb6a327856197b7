"""Capstanfile mode: capstan init and capstan build, composed on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proj = tmp_path / "proj"
    (proj / "ROOTFS" / "etc").mkdir(parents=True)
    (proj / "ROOTFS" / "etc" / "app.conf").write_text("port=8080\n")
    (proj / "assets" / "img").mkdir(parents=True)
    (proj / "assets" / "img" / "logo.txt").write_text("logo")
    (proj / "hello").write_bytes(b"\x7fELF hello")
    (proj / "Capstanfile").write_text(
        "base: probe-loader\ncmdline: /hello --port 8080\nbuild: echo built > out.txt\n"
        "files:\n  /hello: '&'\n  /out.txt: out.txt\n  /srv/assets: assets\n")
    monkeypatch.chdir(proj)
    return proj


def test_build_run_and_inherit(cli, project: Path, tmp_path: Path) -> None:
    result = cli("build", "demo")
    assert result.code == 0, result.err
    listing = cli("image", "ls", "-R", "demo", "-f", "value", "-c", "Path").out.split()
    for path in ("/hello", "/out.txt", "/etc/app.conf", "/srv/assets/img/logo.txt"):
        assert path in listing, (path, listing)
    assert cli("image", "cat", "demo", "/out.txt").out == "built\n"
    done = cli.program("run", "-i", "demo", "--rm", "b1", cwd=project)
    assert "PROBE cmdline=[--rootfs=rofs /hello --port 8080]" in done.stdout, done.stderr
    child = tmp_path / "child"
    child.mkdir()
    (child / "extra").write_text("more")
    (child / "Capstanfile").write_text("base: demo\ncmdline: /hello --child\n"
                                       "files:\n  /extra: extra\n")
    assert cli("build", "-C", child, "kid").code == 0
    listing = cli("image", "ls", "-R", "kid", "-f", "value", "-c", "Path").out.split()
    assert "/extra" in listing and "/srv/assets/img/logo.txt" in listing  # from the base


def test_init_writes_a_template(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("init").code == 0
    assert "cmdline:" in (tmp_path / "Capstanfile").read_text()
    result = cli("init")
    assert result.code == 65 and "--force" in result.err


@pytest.mark.parametrize(("text", "code", "message"), [
    ("base: probe-loader\n", 65, "'cmdline' is required"),
    ("cmdline: /x\ncolour: red\n", 65, "unknown key 'colour'"),
    ("base: probe-loader\ncmdline: /x\nbuild: echo nope; exit 3\n", 69, "nope"),
    ("base: probe-loader\ncmdline: /x\nfiles:\n  /a: missing.txt\n", 65,
     "no such file or directory"),
    ("base: probe-loader\ncmdline: /x\nrootfs: NOPE\n", 65, "rootfs"),
    ("base: no-such-base\ncmdline: /x\n", 65, "no such loader"),
    ("cmdline: /x\nrpm-base: {name: x}\n", 65, "rpm-base is obsolete"),
])
def test_bad_capstanfiles(cli, project: Path, capstan_root: Path, text: str, code: int,
                          message: str) -> None:
    (project / "Capstanfile").write_text(text)
    result = cli("build", "bad")
    assert (result.code, result.err.count("\n")) == (code, 1), result
    assert message in result.err
    assert not (capstan_root / "repository" / "bad").exists()


def test_run_without_an_image_builds_here(cli, project: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Capstan's decision tree, step 4: the Capstanfile, else the package, in the CWD."""
    done = cli.program("run", "--rm", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--rootfs=rofs /hello --port 8080]" in done.stdout
    assert "proj" in cli("images", "-f", "value", "-c", "Name").out.split()
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: pkgapp\ntitle: t\nauthor: a\n")
    (pkg / "meta" / "run.yaml").write_text(
        "runtime: native\nconfig_set:\n  web:\n    bootcmd: /web\n  cli:\n    bootcmd: /cli\n"
        "config_set_default: web\n")
    boot = tmp_path / "boot"
    (boot / "meta").mkdir(parents=True)
    (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: a\n")
    assert cli("package", "import", "-C", boot).code == 0
    env = {**os.environ, "CAPSTAN_LOADER": "probe-loader"}
    done = cli.program("run", "--rm", cwd=pkg, env=env)
    assert "PROBE cmdline=[--rootfs=rofs runscript /run/web;]" in done.stdout, done.stderr
    done = cli.program("run", "--boot", "cli", "--env", "K=V", "--rm", cwd=pkg, env=env)
    assert "PROBE cmdline=[--rootfs=rofs --env=K=V runscript /run/cli;]" in done.stdout
    done = cli.program("run", cwd=tmp_path)
    assert done.returncode == 65 and "missing Capstanfile or package metadata" in done.stderr
