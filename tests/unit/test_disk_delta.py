"""The blocks a run's command line changes in its image (:meth:`LocalDisks.delta`):
what a cloud uploads once per image, then per instance."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core.errors import ImageError
from capstan.drivers.model import InstanceSpec
from capstan.services.disks import LocalDisks, changed_blocks, image_facts, make_overlay

BLOCK = 512 * 1024


def test_changed_blocks_only_what_differs() -> None:
    base = bytes(4096)
    assert changed_blocks(base, 0, 1024, (100, bytes(50))) == ()
    changed = changed_blocks(base, 2, 1024, (2048 + 1000, b"x" * 100))
    assert [i for i, _ in changed] == [2, 3]
    assert changed[0][1] == bytes(1000) + b"x" * 24
    assert changed[1][1] == b"x" * 76 + bytes(948)
    with pytest.raises(ValueError, match="do not cover"):
        changed_blocks(base, 1, 1024, (0, b"x"))
    with pytest.raises(ValueError, match="do not cover"):
        changed_blocks(base[:1000], 0, 1024, (0, b"x"))


@settings(max_examples=60, deadline=None)
@given(base=st.binary(min_size=64, max_size=64), offset=st.integers(0, 63),
       data=st.binary(max_size=20))
def test_changed_blocks_rebuild_the_patched_disk(base: bytes, offset: int, data: bytes) -> None:
    data = data[:64 - offset]
    patched = bytearray(base)
    patched[offset:offset + len(data)] = data
    rebuilt = bytearray(base)
    for index, content in changed_blocks(base, 0, 8, (offset, data)):
        rebuilt[index * 8:(index + 1) * 8] = content
    assert rebuilt == patched
    assert all(base[i * 8:(i + 1) * 8] != c for i, c in changed_blocks(base, 0, 8, (offset, data)))


def _raw(disk: Path, target: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(target)], check=True)
    return target.read_bytes()


def test_delta_is_the_overlay_minus_the_image(image: Path, capstan_root: Path,
                                              tmp_path: Path) -> None:
    """The image plus the delta's blocks is, byte for byte, the overlay a run boots."""
    disks = LocalDisks(capstan_root)
    spec = InstanceSpec("web", image, cmdline="--env=FLEET_INDEX=3 /hello")
    delta = disks.delta(spec, BLOCK)
    assert delta.image == image.absolute()
    assert delta.digest == image_facts(capstan_root, image).sha256
    assert [i for i, _ in delta.blocks] == [0]
    make_overlay(capstan_root, image, spec.cmdline, tmp_path / "run.qcow2")
    want = _raw(tmp_path / "run.qcow2", tmp_path / "run.raw")
    got = bytearray(_raw(image, tmp_path / "image.raw"))
    for index, content in delta.blocks:
        got[index * BLOCK:(index + 1) * BLOCK] = content
    assert bytes(got) == want
    # no command line to write, or the image's own: nothing changes
    assert disks.delta(InstanceSpec("web", image), BLOCK).blocks == ()
    own = image_facts(capstan_root, image).cmdline
    assert disks.delta(InstanceSpec("web", image, cmdline=own), BLOCK).blocks == ()


def test_delta_refuses_an_image_reading_another_file(capstan_root: Path,
                                                     tmp_path: Path) -> None:
    backing = tmp_path / "secret.raw"
    backing.write_bytes(bytes(4096))
    overlay = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(backing), str(overlay)], check=True)
    with pytest.raises(ImageError, match="reads another file"):
        LocalDisks(capstan_root).delta(InstanceSpec("x", overlay), BLOCK)
