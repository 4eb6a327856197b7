"""Configuration precedence, sizes, command lines and the CLI's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capstan.core import config, sizes
from capstan.core.errors import ConfigError, InputError, UsageError
from capstan.image import cmdline


def test_precedence_flag_env_file_default(capstan_root: Path) -> None:
    assert config.load({}).disk_format == "qcow2"
    (capstan_root / "config.yaml").write_text("disk_format: raw\nrepo_url: http://f/\n")
    env = {"CAPSTAN_ROOT": str(capstan_root)}
    cfg = config.load({}, env)
    assert (cfg.disk_format, cfg.sources["disk_format"]) == (
        "raw", str(capstan_root / "config.yaml"))
    env["CAPSTAN_REPO_URL"] = "http://env/"
    assert config.load({}, env).repo_url == "http://env/"
    assert config.load({"repo_url": "http://flag/"}, env).repo_url == "http://flag/"
    assert config.load({"repo_url": None}, env).sources["repo_url"] == "environment"


def test_capstan_booleans_and_bad_values(capstan_root: Path) -> None:
    env = {"CAPSTAN_ROOT": str(capstan_root), "CAPSTAN_DISABLE_KVM": "T"}
    assert config.load({}, env).disable_kvm is True
    env["CAPSTAN_DISABLE_KVM"] = "maybe"
    with pytest.raises(ConfigError, match="disable_kvm must be true or false"):
        config.load({}, env)
    (capstan_root / "config.yaml").write_text("disk_format: [a\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:2: "):
        config.load({}, {"CAPSTAN_ROOT": str(capstan_root)})


def test_parsed_settings_cache_follows_edits(capstan_root: Path) -> None:
    env = {"CAPSTAN_ROOT": str(capstan_root)}
    settings = capstan_root / "config.yaml"
    for aio in ("raw", "qcow2", "raw"):  # each edit is seen at once
        settings.write_text(f"disk_format: {aio}\n")
        assert config.load({}, env).disk_format == aio
    settings.write_text("disk_format: [a\n")  # errors are never cached
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"config\.yaml:\d+: "):
            config.load({}, env)
    settings.write_text("disk_format: raw\n")
    cache = capstan_root / "cache" / "yaml.json"
    for damaged in ("{not json", json.dumps({k: [1] for k in json.loads(cache.read_text())})):
        cache.write_text(damaged)
        assert config.load({}, env).disk_format == "raw"
    code = ("import sys; from capstan.core import config; config.load({})\n"
            "print('YAML', 'yaml' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **env})
    assert "YAML False" in done.stdout  # unchanged settings: no YAML parser loaded


def test_reading_settings_never_creates_a_root(tmp_path: Path) -> None:
    assert config.load({}, {"CAPSTAN_ROOT": str(tmp_path / "typo")}).hypervisor == "qemu"
    assert not (tmp_path / "typo").exists()


def test_read_only_root_loads_settings(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    (root / "config.yaml").write_text("disk_format: raw\n")
    root.chmod(0o555)
    try:
        assert config.load({}, {"CAPSTAN_ROOT": str(root)}).disk_format == "raw"
    finally:
        root.chmod(0o755)


def test_bad_config_file_is_exit_78(cli, capstan_root: Path) -> None:
    (capstan_root / "config.yaml").write_text("qemu_accel: warp\n")
    result = cli("config", "print")
    assert result.code == 78 and "qemu_accel must be one of" in result.err


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 << 20), ("10G", 10 << 30), ("1.5GiB", 3 << 29), ("2048", 2048 << 20),
    ("64k", 64 << 10), ("1T", 1 << 40), ("3mb", 3 << 20)])
def test_sizes(text: str, size: int) -> None:
    assert sizes.parse_size(text) == size


@pytest.mark.parametrize("text", ["x10G", "1.5.G", "G", "10 gigs", "-5M", "0"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        sizes.parse_size(text)


def test_cmdline_split_and_rootfs() -> None:
    assert cmdline.split("--env=A=b\\ c --verbose /x y") == (["--env=A=b\\ c", "--verbose"], "/x y")
    assert cmdline.with_rootfs("/x", "rofs") == "--rootfs=rofs /x"
    assert cmdline.with_rootfs("--rootfs=zfs /x", "rofs") == "--rootfs=zfs /x"
    with pytest.raises(InputError, match="must start with '--'"):
        cmdline.validate("-v /x")


@pytest.mark.parametrize(("arg", "quoted"), [
    ("/hello", "/hello"), ("a b", '"a b"'), ('say "hi"', '"say \\"hi\\""'),
    ("a;b", '"a;b"'), ("C:\\temp", '"C:\\\\temp"'), ("", '""')])
def test_quote_arg(arg: str, quoted: str) -> None:
    assert cmdline.quote_arg(arg) == quoted


@pytest.mark.parametrize("arg", ["$HOME x", "café", "a\nb"])
def test_quote_arg_rejects(arg: str) -> None:
    with pytest.raises(InputError):
        cmdline.quote_arg(arg)


def test_help_lists_commands_without_heavy_imports() -> None:
    code = ("import sys, io; from capstan.shell import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('boto3', 'pyvmomi', 'libvirt', 'qemu.qmp') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "HEAVY []" in done.stdout
    for name in ("compose", "image info", "image ls", "image diff", "config print"):
        assert f"  {name} " in done.stdout


def test_no_arguments_prints_help(cli) -> None:
    result = cli()
    assert result.code == 0 and "Commands:" in result.out


def test_every_entry_point_imports_and_every_command_is_registered() -> None:
    import importlib.metadata
    import inspect as pyinspect
    import pkgutil

    from cliff.command import Command

    import capstan.commands

    eps = importlib.metadata.distribution("pycapstan").entry_points.select(group="capstan.cli")
    registered = {ep.load() for ep in eps}
    for mod in pkgutil.iter_modules(capstan.commands.__path__):
        module = importlib.import_module(f"capstan.commands.{mod.name}")
        for _, cls in pyinspect.getmembers(module, pyinspect.isclass):
            if (issubclass(cls, Command) and cls.__module__ == module.__name__
                    and not cls.__name__.startswith("_")):
                assert cls in registered, cls


def test_version(cli) -> None:
    result = cli("--version")
    assert result.code == 0
