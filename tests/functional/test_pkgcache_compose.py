"""A package compose through the decompressed-package cache writes the image a compose
without it writes, byte for byte; ``qemu-img check`` finds it clean and the probe boots it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core import identity
from capstan.packages import records

from guest import boot, expected_report

pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True)
def unpin() -> Iterator[None]:
    yield
    for fd in records.pinned.values():
        os.close(fd)
    records.pinned.clear()


def _package(cli, src: Path, name: str, files: dict[str, bytes], require: str = "",  # type: ignore
             ) -> None:
    (src / "meta").mkdir(parents=True)
    (src / "meta" / "package.yaml").write_text(f"name: {name}\ntitle: t\nauthor: a\n{require}")
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert cli("package", "import", "-C", src).code == 0


def test_cached_uncached_and_rebuilt_composes_are_the_same_image(
        cli, tmp_path: Path, capstan_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(cli, tmp_path / "boot", "osv.bootstrap", {"etc/hosts": b"127.0.0.1 localhost\n"})
    lib = {f"usr/lib/f{n:02d}": os.urandom(1000 + 7919 * n) for n in range(30)}
    lib["usr/lib/zeros"] = bytes(300_000)
    _package(cli, tmp_path / "lib", "my.lib", lib)
    app = tmp_path / "app"
    (app / "run").mkdir(parents=True)
    (app / "run" / "default").write_text("/hello")
    (app / "hello").write_bytes(bytes(range(256)) * 40)
    (app / "meta").mkdir()
    (app / "meta" / "package.yaml").write_text("name: my.app\ntitle: t\nauthor: a\n"
                                               "require: [my.lib]\n")

    def compose(name: str) -> bytes:
        out = tmp_path / f"{name}.qcow2"
        result = cli("package", "compose", "-C", app, "-l", "probe-loader", "-o", out)
        assert result.code == 0, result.err
        done = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, check=False)
        assert done.returncode == 0, done.stdout
        return out.read_bytes()

    uncached = compose("uncached")  # just imported: read streamed, not cached
    assert not (capstan_root / "cache" / "packages").exists() or \
        not any((capstan_root / "cache" / "packages").iterdir())
    monkeypatch.setattr(identity, "RACY_NS", 0)
    assert compose("built") == uncached
    assert len(list((capstan_root / "cache" / "packages").glob("*.tar"))) == 2
    assert compose("hit") == uncached
    shutil.rmtree(capstan_root / "cache" / "packages")  # always safe
    assert compose("rebuilt") == uncached
    image = tmp_path / "hit.qcow2"
    report = boot(image, "qcow2", tmp_path / "serial.log")
    for key, value in expected_report(image).items():
        assert report.get(key) == value, (key, report)
