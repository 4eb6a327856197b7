"""Gap 4 of issue 17: ``runtime init`` templates Capstan's own types accept, and
``runtime list`` in Capstan's order.

Capstan (reference 4.7): "``list`` | Prints ``RUNTIME``/``DESCRIPTION``/``DEPENDENCIES``
for ``native`` ..., ``node`` ..., ``java`` ..., ``python`` ..., in that order."
(6.3) "a config set whose values do not fit the runtime's types (a list where a string
is expected, ...) -> ``failed to parse data for configset 'X': ...``"; (6.4) the types:
java ``main`` string, ``classpath`` list of strings, ``xms``/``xmx`` string, ``jvm_args``
and ``args`` lists of strings; node ``main`` string, ``node_args``/``args`` lists,
``shell`` bool; python likewise with ``python_args``. Capstan's own template wrote
``classpath: <list>`` and ``shell: <value>``, which its decoder rejects.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from capstan.packages.runtimes import parse_run
from capstan.packages.templates import run_template

#: Go types of Capstan's runtime structs (reference 6.4), plus the common keys (6.3)
CAPSTAN_TYPES: dict[str, dict[str, type]] = {
    "native": {"bootcmd": str},
    "java": {"main": str, "classpath": list, "xms": str, "xmx": str, "jvm_args": list,
             "args": list},
    "node": {"main": str, "node_args": list, "args": list, "shell": bool},
    "python": {"main": str, "python_args": list, "args": list, "shell": bool},
}
COMMON = {"env": dict, "base": str}
REQUIRED = {"native": {"bootcmd"}, "java": {"main"}, "node": {"main"}, "python": {"main"}}


def _go_decodes(runtime: str, config_set: dict[str, object]) -> None:
    """What Capstan's yaml.v2 decode into the runtime's struct requires: each value of
    the key's type (lists of strings, maps of strings to scalars)."""
    types = CAPSTAN_TYPES[runtime] | COMMON
    for key, value in config_set.items():
        assert key in types, key
        assert isinstance(value, types[key]), (key, value)
        if isinstance(value, list):
            assert all(isinstance(v, str) for v in value), (key, value)
        if isinstance(value, dict):
            assert all(isinstance(v, str | int | float | bool) for v in value.values())


def _uncommented(text: str, *, skip: tuple[str, ...] = ("base",)) -> str:
    """*text* with every commented example key (and its block) uncommented."""
    out, active = [], False
    for line in text.splitlines():
        example = re.fullmatch(r"(\s*)# ([a-z_]+):(.*)", line)
        if example and example.group(2) not in skip:
            active = True
            out.append(f"{example.group(1)}{example.group(2)}:{example.group(3)}")
        elif active and re.fullmatch(r"\s*# [ -].*", line):
            out.append(line.replace("# ", "", 1))
        else:
            active = False
            out.append(line)
    return "\n".join(out) + "\n"


def test_runtime_list_in_capstans_order(cli) -> None:  # type: ignore[no-untyped-def]
    rows = cli("runtime", "list", "-f", "value").out.splitlines()
    assert [r.split()[0] for r in rows] == ["native", "node", "java", "python"]


@pytest.mark.parametrize("runtime", sorted(CAPSTAN_TYPES))
def test_templates_decode_into_capstans_types(runtime: str) -> None:
    for text in (run_template(runtime), run_template(runtime, plain=True),
                 _uncommented(run_template(runtime))):
        assert "<" not in text  # no <list>/<value> placeholders
        data = yaml.safe_load(text)
        assert data["runtime"] == runtime and data["config_set_default"] == "myconfig1"
        config_set = data["config_set"]["myconfig1"]
        _go_decodes(runtime, config_set)
        assert REQUIRED[runtime] <= set(config_set)
        parse_run(data, "app", "meta/run.yaml")  # and our own validation accepts it


def test_plain_template_is_the_minimal_valid_file() -> None:
    assert run_template("native", plain=True) == (
        "runtime: native\nconfig_set:\n  myconfig1:\n    bootcmd: /hello.so\n"
        "config_set_default: myconfig1\n")


def test_every_optional_key_has_a_commented_example_of_its_type() -> None:
    for runtime, types in CAPSTAN_TYPES.items():
        full = yaml.safe_load(_uncommented(run_template(runtime), skip=()))
        config_set = full["config_set"]["myconfig1"]
        assert set(config_set) == set(types) | set(COMMON)
        _go_decodes(runtime, config_set)


def test_runtime_init_writes_it(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "pkg"
    assert cli("package", "init", pkg, "-n", "app", "-t", "App", "-a", "me",
               "--runtime", "node").code == 0
    assert (pkg / "meta" / "run.yaml").read_text() == run_template("node")
    assert cli("runtime", "init", "-r", "java", "-C", pkg, "--force", "--plain").code == 0
    assert (pkg / "meta" / "run.yaml").read_text() == run_template("java", plain=True)
