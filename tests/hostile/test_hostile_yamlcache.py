"""Hostile parsed-YAML cache (``$CAPSTAN_ROOT/cache/yaml.json``): garbage, oversized, forged
entries, a link, FIFO or directory in its place. Each costs a parse: the settings read are
the file's, the command works, and nothing outside changes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from capstan.core import config

from hostile_kit import Sandbox

TEXT = "disk_format: raw\n"
KEY = hashlib.sha256(b"plain\0" + TEXT.encode()).hexdigest()


def _forged(entry: object) -> Callable[[Path, Sandbox], None]:
    def damage(kept: Path, sandbox: Sandbox) -> None:
        kept.write_text(json.dumps({"version": 1, "entries": {KEY: entry}}))
    return damage


def _link(kept: Path, sandbox: Sandbox) -> None:
    kept.unlink()
    kept.symlink_to(sandbox.victim)


def _fifo(kept: Path, sandbox: Sandbox) -> None:
    kept.unlink()
    os.mkfifo(kept)


def _directory(kept: Path, sandbox: Sandbox) -> None:
    kept.unlink()
    (kept / "sub").mkdir(parents=True)


def _oversized(kept: Path, sandbox: Sandbox) -> None:
    with kept.open("r+b") as f:
        f.truncate(1 << 30)  # sparse


DAMAGE: dict[str, Callable[[Path, Sandbox], None]] = {
    "garbage": lambda kept, sandbox: kept.write_bytes(b"\xff{not json"),
    "a list": lambda kept, sandbox: kept.write_text("[]"),
    "other version": lambda kept, sandbox: kept.write_text(
        json.dumps({"version": 9, "entries": {}})),
    "forged value, no check": _forged([{"disk_format": "vmdk"}, "0" * 32]),
    "forged value, short": _forged([{"disk_format": "vmdk"}]),
    "not a pair": _forged({"disk_format": "vmdk"}),
    "NaN value": _forged([float("nan"), "0" * 32]),
    "link to the victim": _link,
    "FIFO": _fifo,
    "directory": _directory,
    "oversized": _oversized,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_yaml_cache_costs_a_parse(cli, sandbox: Sandbox,
                                            damage: Callable[[Path, Sandbox], None]) -> None:
    (sandbox.root / "config.yaml").write_text(TEXT)
    env = {"CAPSTAN_ROOT": str(sandbox.root)}
    assert config.load({}, env).disk_format == "raw"
    kept = sandbox.root / "cache" / "yaml.json"
    damage(kept, sandbox)
    assert config.load({}, env).disk_format == "raw"
    result = cli("images")
    assert result.code == 0 and "capstan:" not in result.err, result.err
    if not kept.is_dir():
        assert kept.is_file() and not kept.is_symlink()
        assert KEY in json.loads(kept.read_text())["entries"]  # parsed again, kept again
