"""Hostile inputs to the GCE and OpenStack drivers: instance names that try to leave the
instance directory, credentials files that must never be echoed, records that lie."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostile_kit import Sandbox, check, snapshot

os.environ.setdefault("NO_GCE_CHECK", "true")  # no metadata-server probe from google.auth

SECRET = "SECRET-KEY-MATERIAL-42"


@pytest.mark.parametrize("driver", ["gce", "openstack"])
@pytest.mark.parametrize("name", ["../../outside/dir", "..", "a/b", "x" * 300, "-rf",
                                  "name\nwith newline", "\x1b[31mred"])
def test_instance_names_cannot_escape(cli, sandbox: Sandbox, driver: str, name: str) -> None:
    result = cli("logs", "-p", driver, "--", name)
    check(result, 64, f"invalid {driver} instance name")
    assert "\x1b" not in result.err
    assert not (sandbox.root / "instances").exists()


@pytest.mark.parametrize("driver", ["gce", "openstack"])
def test_planted_records_are_skipped(cli, sandbox: Sandbox, driver: str) -> None:
    """A record directory whose name the cloud would refuse is not listed or followed."""
    home = sandbox.root / "instances" / driver
    home.mkdir(parents=True)
    (home / "Bad Name").mkdir()
    (home / "Bad Name" / "instance.json").write_text("{}")
    (home / "evil").symlink_to(sandbox.outside)
    (sandbox.outside / "instance.json").write_text('{"zone": "us-central1-a"}')
    sandbox.before = snapshot(sandbox.outside)  # the bait is part of what must survive
    result = cli("instances", "-p", driver, "-f", "value")
    assert result.code == 0 and result.out == "", result
    check(cli("logs", "-p", driver, "Bad Name"), 64, "instance name")
    check(cli("logs", "-p", driver, "evil"), 65, "is a symbolic link")
    result = cli("delete", "-p", driver, "evil")
    assert result.code == 65 and "is a symbolic link" in result.err, result


@pytest.mark.parametrize("content", [
    '{"type": "service_account", "project_id": "p", "private_key_id": "k", '
    '"private_key": "-----BEGIN PRIVATE KEY-----\\n' + SECRET + '\\n-----END PRIVATE KEY-----\\n", '
    '"client_email": "a@p.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:1/t"}',
    "not json " + SECRET,
    '{"type": "authorized_user", "refresh_token": "' + SECRET + '"}',
    None,  # a directory
])
def test_gce_credentials_are_never_echoed(cli, sandbox: Sandbox, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          content: str | None) -> None:
    creds = tmp_path / "creds.json"
    if content is None:
        creds.mkdir()
    else:
        creds.write_text(content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("CAPSTAN_GCE_ENDPOINT", "http://127.0.0.1:1")
    result = cli("-vv", "images", "-p", "gce")
    assert result.code in (75, 78), result
    assert SECRET not in result.out + result.err
    assert len(result.err.strip().splitlines()) >= 1 and "Traceback" not in result.err


@pytest.mark.parametrize("how", ["clouds.yaml", "environment"])
def test_openstack_password_is_never_echoed(cli, sandbox: Sandbox, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """An unreachable Keystone, verbose logging: the password appears nowhere."""
    for key in ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME"):
        monkeypatch.delenv(key, raising=False)
    auth = {"auth_url": "http://127.0.0.1:1/identity/v3", "username": "u",
            "password": SECRET, "project_name": "p", "user_domain_name": "Default",
            "project_domain_name": "Default"}
    if how == "clouds.yaml":
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {"c": {"auth": auth}}}))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        monkeypatch.setenv("CAPSTAN_OPENSTACK_CLOUD", "c")
    else:
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "none.yaml"))
        for key, value in auth.items():
            monkeypatch.setenv(f"OS_{key.upper()}", value)
    result = cli("-vv", "images", "-p", "openstack")
    assert result.code == 75, result
    assert SECRET not in result.out + result.err and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1].startswith("capstan: OpenStack")
