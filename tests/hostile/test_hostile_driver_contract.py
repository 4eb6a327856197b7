"""Hostile inputs to the driver contract: AWS instance names and planted records (AWS keeps
its records as GCE and OpenStack do now), and a second create of a name in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capstan.core.config import load
from capstan.core.errors import Conflict
from capstan.services.disks import open_driver
from capstan.services.instances import RunRequest, create_instance, make_spec

from hostile_kit import Sandbox, check, snapshot


@pytest.mark.parametrize("name", ["../../outside/dir", "..", "a/b", "x" * 300, "-rf",
                                  "name\nwith newline", "\x1b[31mred"])
def test_aws_instance_names_cannot_escape(cli, sandbox: Sandbox, name: str) -> None:
    result = cli("logs", "-p", "aws", "--", name)
    check(result, 64, "invalid aws instance name")
    assert "\x1b" not in result.err
    assert not (sandbox.root / "instances").exists()


def test_planted_aws_records_are_not_followed(cli, sandbox: Sandbox) -> None:
    """A record directory that is a symbolic link out of the root is neither listed, read
    nor deleted through; no AWS call is made for it."""
    home = sandbox.root / "instances" / "aws"
    home.mkdir(parents=True)
    (home / "evil").symlink_to(sandbox.outside)
    (sandbox.outside / "instance.json").write_text('{"ami": "ami-1", "instance": null}')
    sandbox.before = snapshot(sandbox.outside)  # the bait is part of what must survive
    result = cli("instances", "-p", "aws", "-f", "value")
    assert result.code == 0 and result.out == "", result
    check(cli("logs", "-p", "aws", "evil"), 65, "is a symbolic link")
    check(cli("delete", "-p", "aws", "evil"), 65, "is a symbolic link")


def test_a_second_qemu_create_leaves_the_first_instance_whole(
        cli, sandbox: Sandbox, image: Path) -> None:
    """The driver refuses a name in use (Conflict), and the instance it would have
    replaced keeps its record and disk."""
    config = load()
    driver = open_driver("qemu", config)
    spec = make_spec(config, str(image), "once", RunRequest(memory="256M", cpus=1))
    create_instance(driver, spec)
    home = sandbox.root / "instances" / "qemu" / "once"
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    with pytest.raises(Conflict, match="instance once exists"):
        create_instance(driver, spec)
    assert {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()} == before
    assert json.loads((home / "instance.json").read_text())["name"] == "once"
    driver.delete("once")
