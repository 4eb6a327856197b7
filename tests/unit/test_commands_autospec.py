"""Commands against autospecced services: each verb makes the one typed call it should
and shows what the service returns; no backend, no disk image, no QEMU."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest

from capstan.core.checks import Finding, Status
from capstan.core.errors import BackendError, NotFound
from capstan.services import doctor, volumes


@pytest.fixture
def spec_of(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Replace ``module.name`` by an autospec mock (a wrong call fails as a TypeError)."""
    def replace(module: object, name: str, **kwargs: object) -> mock.MagicMock:
        fake = mock.create_autospec(getattr(module, name), **kwargs)
        monkeypatch.setattr(module, name, fake)
        return fake
    return replace


def test_volume_create_and_list_call_the_volumes_service(cli, spec_of,  # type: ignore
                                                         capstan_root: Path) -> None:
    made = volumes.VolumeInfo("data", Path("/p/volumes/data"), "qcow2", 16 << 20, 196608)
    create = spec_of(volumes, "create", return_value=made)
    listed = spec_of(volumes, "list_volumes", return_value=[made])
    result = cli("volume", "create", "data", "-s", "16M", "-f", "qcow2", "-C", "/p")
    assert result.code == 0, result.err
    create.assert_called_once_with(Path("/p"), "data", "16M", "qcow2", root=capstan_root)
    assert result.out.startswith("Created volume: data (qcow2, ")
    assert result.out.endswith(") at /p/volumes/data\n")
    rows = json.loads(cli("volume", "list", "-C", "/p", "-f", "json").out)
    listed.assert_called_once_with(Path("/p"))
    assert [(r["Name"], r["Format"], r["Path"]) for r in rows] == [
        ("data", "qcow2", "/p/volumes/data")]


def test_a_service_error_is_the_commands_one_line(cli, spec_of) -> None:  # type: ignore
    spec_of(volumes, "delete", side_effect=NotFound("no volume named 'x' in /p/volumes"))
    result = cli("volume", "delete", "x", "-C", "/p")
    assert (result.code, result.err) == (NotFound.exit_code,
                                         "capstan: no volume named 'x' in /p/volumes\n")


def test_doctor_shows_the_findings_and_fails_on_a_failure(cli, spec_of) -> None:  # type: ignore
    found = [Finding("qemu", Status.OK, "qemu 8"),
             Finding("kvm", Status.FAIL, "no /dev/kvm", "modprobe kvm")]
    diagnose = spec_of(doctor, "diagnose", return_value=found)
    result = cli("doctor", "-f", "json")
    assert result.code == BackendError.exit_code
    diagnose.assert_called_once()
    assert [(r["Check"], r["Status"], r["Fix"]) for r in json.loads(result.out)] == [
        ("qemu", "ok", ""), ("kvm", "fail", "modprobe kvm")]
