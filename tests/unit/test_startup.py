"""What ``capstan compose`` loads: no scan of installed distributions for command hooks, no
filelock import (the compose lock is a plain ``flock`` of filelock's lock file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import stevedore.extension

from capstan.core import fs


def test_commands_run_without_a_hook_scan(cli, app_tree: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    real = stevedore.extension.ExtensionManager.__init__

    def init(self: object, namespace: str, *args: object, **kwargs: object) -> None:
        scanned.append(namespace)
        real(self, namespace, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stevedore.extension.ExtensionManager, "__init__", init)
    result = cli("compose", "-l", "probe-loader", "-o", tmp_path / "a.qcow2", app_tree)
    assert result.code == 0, result.err
    assert not [n for n in scanned if n.startswith("capstan.cli.")]
    assert cli("compose", "--help").code == 0


def test_compose_does_not_import_filelock(app_tree: Path, tmp_path: Path) -> None:
    code = ("import sys\nfrom capstan.shell import main\n"
            f"assert main(['compose', '-l', 'probe-loader', '-o', {str(tmp_path / 'a.qcow2')!r},"
            f" {str(app_tree)!r}]) == 0\n"
            "assert 'filelock' not in sys.modules, 'filelock imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_held_and_filelock_exclude_each_other(tmp_path: Path) -> None:
    with fs.held(tmp_path, "compose", "a/b") as got:
        assert got
        other = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
             "from capstan.core.fs import lock\nimport filelock\n"
             f"l = lock(Path({str(tmp_path)!r}), 'compose', 'a/b')\n"
             "try:\n    l.acquire(timeout=0.1)\nexcept filelock.Timeout:\n    sys.exit(3)\n"],
            check=False)
        assert other.returncode == 3
    filelock = fs.lock(tmp_path, "compose", "a/b")
    with filelock:
        other = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
             "from capstan.core.fs import held\n"
             f"with held(Path({str(tmp_path)!r}), 'compose', 'a/b', wait=False) as got:\n"
             "    sys.exit(0 if got else 3)\n"], check=False)
        assert other.returncode == 3
    with fs.held(tmp_path, "compose", "a/b", wait=False) as got:
        assert got


def test_package_compose_loads_neither_drivers_nor_image_inspection(cli, tmp_path: Path
                                                                   ) -> None:
    boot = tmp_path / "bootstrap"
    (boot / "meta").mkdir(parents=True)
    (boot / "meta" / "package.yaml").write_text("name: osv.bootstrap\ntitle: b\nauthor: t\n")
    assert cli("package", "import", "-C", boot).code == 0
    package = tmp_path / "hello"
    (package / "meta").mkdir(parents=True)
    (package / "meta" / "package.yaml").write_text("name: hello\ntitle: hello\nauthor: t\n")
    (package / "hello").write_bytes(b"hello")
    code = ("import sys\nfrom capstan.shell import main\n"
            f"assert main(['package', 'compose', '-C', {str(package)!r}, '-l', 'probe-loader',"
            f" '-o', {str(tmp_path / 'a.qcow2')!r}]) == 0\n"
            "loaded = {'capstan.services.instances', 'capstan.services.imagefile',"
            " 'capstan.drivers.base', 'filelock'} & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
