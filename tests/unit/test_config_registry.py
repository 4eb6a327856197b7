"""Settings from the driver registry: QEMU's keys are the QEMU driver's, unknown keys are
reported by every command, a bad hypervisor at load, without importing a driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capstan.core import config
from capstan.core.errors import ConfigError
from capstan.drivers.qemu import QemuDriver
from capstan.services import doctor

QEMU_KEYS = {"qemu_aio_type", "qemu_path", "qemu_accel"}


def test_qemu_keys_are_declared_by_the_qemu_driver(capstan_root: Path) -> None:
    assert not QEMU_KEYS & set(config.KEYS)
    assert {s.key for s in QemuDriver.settings} >= QEMU_KEYS
    assert "qemu_accel" not in config.load().values  # resolved when the driver loads
    assert QemuDriver(config.load()).config.qemu_aio_type == "threads"
    rows = {key: (value, source) for key, value, source in doctor.settings(config.load())}
    assert rows["qemu_accel"] == ("tcg", "environment")  # CAPSTAN_QEMU_ACCEL of conftest
    assert rows["qemu_aio_type"] == ("threads", "default")


def test_qemu_doctor_checks_are_the_qemu_drivers(capstan_root: Path) -> None:
    found = QemuDriver.doctor(config.load().with_settings(QemuDriver.settings))
    assert [f.check for f in found] == ["qemu", "accelerators", "bridge"]
    host = [f.check for f in doctor.diagnose(config.load())]
    assert host[:4] == ["root", "qemu-img", "kvm", "nested"] and host.count("qemu") == 1


def test_an_unknown_key_is_one_warning_for_any_command(cli, capstan_root: Path) -> None:
    path = capstan_root / "config.yaml"
    path.write_text("hypervisor: qemu\nbogus_key: 1\nqemu_accell: kvm\n"
                    "cloud_hypervisor_kernel: /k\n")  # a driver's key: no warning
    result = cli("images")
    assert result.code == 0
    assert result.err.splitlines() == [f"{path}: unknown key 'bogus_key' ignored"]
    # qemu_accell is named like the QEMU driver's keys: reported as that driver loads
    result = cli("instances")
    assert result.code == 0
    assert f"{path}: unknown key 'qemu_accell' ignored" in result.err.splitlines()


def test_a_driver_key_with_a_bad_value_fails_as_its_driver_loads(cli,
                                                                 capstan_root: Path) -> None:
    (capstan_root / "config.yaml").write_text("qemu_aio_type: sideways\n")
    assert cli("images").code == 0
    result = cli("instances")
    assert result.code == ConfigError.exit_code
    assert result.err.strip() == (f"capstan: {capstan_root / 'config.yaml'}: qemu_aio_type "
                                  "must be one of threads, native, not 'sideways'")


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_bad_hypervisor_is_78_at_load_naming_the_drivers(cli, capstan_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           where: str) -> None:
    if where == "file":
        (capstan_root / "config.yaml").write_text("hypervisor: qemuu\n")
    else:
        monkeypatch.setenv("CAPSTAN_HYPERVISOR", "qemuu")
    result = cli("images")
    assert result.code == ConfigError.exit_code and result.err.count("\n") == 1
    installed = config.installed_drivers()
    assert {"qemu", "libvirt", "aws"} <= set(installed)
    assert (f"hypervisor: 'qemuu' is not an installed driver (installed: "
            f"{', '.join(installed)})") in result.err
    with pytest.raises(ConfigError, match="is not an installed driver"):
        config.load()


def test_a_bad_hypervisor_is_found_without_importing_a_driver(capstan_root: Path) -> None:
    code = ("import sys\nfrom capstan.shell import main\ncode = main(['images'])\n"
            "print(code, sorted(m for m in sys.modules if m.startswith('capstan.drivers.')))")
    env = {**os.environ, "CAPSTAN_HYPERVISOR": "warp"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env=env)
    contract = ("['capstan.drivers.base', 'capstan.drivers.disks', 'capstan.drivers.foreground', "
                "'capstan.drivers.images', 'capstan.drivers.logs', 'capstan.drivers.model']\n")
    # no driver module
    assert done.stdout.split(" ", 1) == ["78", contract], done.stderr
    assert json.dumps("warp") in done.stderr.replace("'", '"')


def test_only_a_name_none_of_pycapstan_s_drivers_has_scans_every_distribution(
        capstan_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[int] = []
    real = config.installed_drivers

    def counted() -> tuple[str, ...]:
        scans.append(1)
        return real()

    monkeypatch.setattr(config, "installed_drivers", counted)
    (capstan_root / "config.yaml").write_text("hypervisor: libvirt\nqemu_accel: tcg\n")
    assert config.load().values["hypervisor"] == "libvirt"
    assert scans == []  # pycapstan's own driver and keys: its metadata is enough
    (capstan_root / "config.yaml").write_text("hypervisor: warp\n")
    with pytest.raises(ConfigError, match="'warp' is not an installed driver"):
        config.load()
    assert scans == [1]
