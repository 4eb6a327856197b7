"""The digest an instance's AMI is tagged with (a child of its image's base)."""

from __future__ import annotations

from pathlib import Path

from capstan.drivers.aws.child import child_digest
from capstan.drivers.base import DiskDelta


def test_child_digest_names_the_image_and_its_changed_blocks() -> None:
    def digest(base: str, *blocks: tuple[int, bytes]) -> str:
        return child_digest(DiskDelta(Path("/i"), base, blocks))

    one = digest("a" * 64, (0, b"x"))
    assert one == child_digest(DiskDelta(Path("/elsewhere"), "a" * 64, ((0, b"x"),)))
    others = {digest("b" * 64, (0, b"x")), digest("a" * 64, (1, b"x")),
              digest("a" * 64, (0, b"y")), digest("a" * 64, (0, b"x"), (1, b"x")),
              digest("a" * 64)}
    assert one not in others and len(others) == 5
    assert len(one) == 64 and one != "a" * 64
