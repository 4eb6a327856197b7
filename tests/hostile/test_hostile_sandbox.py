"""The sandbox itself notices a change outside it."""

from __future__ import annotations

import pytest

from hostile_kit import Sandbox


def test_sandbox_sees_a_write_outside(sandbox: Sandbox) -> None:
    sandbox.victim.write_bytes(b"owned\n")
    with pytest.raises(AssertionError):
        sandbox.assert_untouched()
    sandbox.victim.write_bytes(b"precious\n")
