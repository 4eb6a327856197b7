"""Hostile config.yaml keys and hypervisor values: every command still gives one line per
problem, escaped, and never a traceback; nothing outside the root changes."""

from __future__ import annotations

import pytest

from hostile_kit import check


@pytest.mark.parametrize(("text", "shown"), [
    ("1: x\n", "1"),
    ("true: 1\n", "True"),
    ("null: 2\n", "None"),
    ("3.5: 2\n", "3.5"),
    ('"a\\u001b[31mb\\nc": 1\n', r"'a\x1b[31mb\nc'"),
])
def test_odd_unknown_keys_are_one_escaped_warning(cli, sandbox, text: str,  # type: ignore
                                                  shown: str) -> None:
    path = sandbox.root / "config.yaml"
    path.write_text(text)
    result = cli("images")
    assert result.code == 0, result.err
    assert result.err.splitlines() == [f"{path}: unknown key {shown} ignored"]
    assert "\x1b" not in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("value", ['"q\\nemu\\u001b[2J"', "[qemu]", "{a: 1}", "''", "'../qemu'"])
def test_hostile_hypervisor_values_are_78(cli, sandbox, value: str) -> None:  # type: ignore
    (sandbox.root / "config.yaml").write_text(f"hypervisor: {value}\n")
    result = cli("images")
    check(result, 78, "hypervisor")
    assert "\x1b" not in result.err


def test_a_hostile_hypervisor_in_the_environment_is_78(cli, sandbox,  # type: ignore
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_HYPERVISOR", "capstan.drivers.qemu:QemuDriver")
    check(cli("instances"), 78, "is not an installed driver (installed: ")
