"""Every example package composes reproducibly onto the probe loader and boots its command
line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_packages import EXAMPLE_CASES, EXAMPLES, repository  # noqa: F401 (fixture)

pytestmark = pytest.mark.qemu


@pytest.mark.usefixtures("repository")
@pytest.mark.parametrize(("example", "cmdline", "script", "boot", "path"), EXAMPLE_CASES)
def test_examples_compose_and_boot(cli, tmp_path: Path, example: str,
                                   cmdline: str, script: str, boot: str, path: str) -> None:
    source = tmp_path / example
    shutil.copytree(EXAMPLES / example, source)
    if example == "hello-c":
        (source / "hello").write_bytes(b"\x7fELF stand-in")  # `make` builds the real one
    image = tmp_path / f"{example}.qcow2"
    result = cli("package", "compose", "-C", source, "-l", "probe-loader", "-o", image,
                 "-f", "json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    assert shown["Command line"] == f"--rootfs=rofs {cmdline}"
    assert cli("image", "cat", image, f"/run/{script}").out == boot
    listing = cli("image", "ls", "-R", image, "-f", "value", "-c", "Path").out.split()
    assert path in listing and "/etc/hosts" in listing  # the bootstrap package is in
    assert not any(p.startswith("/meta") or p.endswith(".mpm") for p in listing)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    image.unlink()
    assert cli("package", "compose", "-C", source, "-l", "probe-loader", "-o", image).code == 0
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest  # reproducible
    done = cli.program("run", "-i", image, "--rm", "ex")
    assert f"PROBE cmdline=[--rootfs=rofs {cmdline}]" in done.stdout, done.stderr
    if example == "simplefoam":  # openfoam.simplefoam overwrote openfoam.core's library
        assert shown["Collisions"] == 1
        assert cli("image", "cat", image, "/usr/lib/libfoam.so").out == "patched"
