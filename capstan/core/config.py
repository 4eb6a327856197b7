"""Configuration: flags > ``CAPSTAN_*`` environment > config.yaml > etc/ defaults."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from capstan.core.errors import ConfigError, LocalIOError

LOG = logging.getLogger(__name__)

__all__ = ["KEYS", "Config", "load"]

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}
_CHOICES = {
    "qemu_aio_type": ("threads", "native"),
    "qemu_accel": ("auto", "kvm", "hvf", "tcg"),
    "aws_upload": ("ebs", "s3"),
    "vbox_storage": ("ahci", "virtio-scsi"),
}
# key -> type; every key also reads the environment variable CAPSTAN_<KEY>.
KEYS: dict[str, type] = {
    "repo_url": str,
    "release_tag": str,
    "disable_kvm": bool,
    "qemu_aio_type": str,
    "qemu_path": str,
    "qemu_accel": str,
    "hypervisor": str,
    "loader": str,
    "disk_format": str,
    "libvirt_uri": str,
    "libvirt_pool": str,
    "libvirt_network": str,
    "repositories": str,
    "github_api": str,
    "github_repo": str,
    "github_token": str,
    "aws_region": str,
    "aws_instance_type": str,
    "aws_subnet": str,
    "aws_security_group": str,
    "aws_upload": str,
    "aws_bucket": str,
    "gce_project": str,
    "gce_zone": str,
    "gce_machine_type": str,
    "gce_network": str,
    "gce_bucket": str,
    "gce_endpoint": str,
    "openstack_cloud": str,
    "openstack_flavor": str,
    "openstack_network": str,
    "openstack_floating_ip": bool,
    "openstack_floating_network": str,
    "vbox_storage": str,
    "vsphere_url": str,
    "vsphere_user": str,
    "vsphere_password": str,
    "vsphere_insecure": bool,
    "vsphere_cafile": str,
    "vsphere_datacenter": str,
    "vsphere_datastore": str,
    "vsphere_network": str,
}


@dataclass(frozen=True)
class Config:
    """The effective settings, each with the place it came from."""

    root: Path
    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def repository(self) -> Path:
        """The local image repository, ``<root>/repository``."""
        return self.root / "repository"

    @property
    def instances(self) -> Path:
        """Instance state, ``<root>/instances``."""
        return self.root / "instances"


def _coerce(key: str, value: Any, where: str) -> Any:
    kind = KEYS[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    text = str(value)
    if key in _CHOICES and text not in _CHOICES[key]:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(_CHOICES[key])}, "
                          f"not {text!r}")
    return text


class _ParsedYaml:
    """Settings files parsed once: the mappings are kept in ``<root>/cache/config.json``
    under the SHA-1 of their text, so most commands start without loading a YAML
    parser. The cache is advisory: a lost or stale entry costs one parse."""

    def __init__(self, root: Path) -> None:
        self._file = root / "cache" / "config.json"
        try:
            old = json.loads(self._file.read_bytes())
        except (OSError, ValueError):
            old = {}
        self._old: dict[str, Any] = old if isinstance(old, dict) else {}
        self._used: dict[str, Any] = {}

    def parse(self, text: str, where: str) -> dict[str, Any]:
        """The mapping in *text*; ConfigError naming *where* and the line if it is not one."""
        key = hashlib.sha1(text.encode()).hexdigest()
        data = self._old.get(key)
        if not isinstance(data, dict):  # not cached (or a damaged entry)
            data = _parse_yaml(text, where)
        self._used[key] = data
        return data

    def save(self) -> None:
        if self._used == self._old or not self._file.parent.parent.is_dir():
            return  # unchanged, or no root yet: reading settings never creates one
        from capstan.core.fs import atomic_write

        with contextlib.suppress(OSError, LocalIOError):  # a read-only root works uncached
            self._file.parent.mkdir(exist_ok=True)
            atomic_write(self._file, json.dumps(self._used, default=str).encode())


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    from capstan.core.yamlfile import load_text

    data = load_text(text, where, error=ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def load(flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting; *flags* holds values given on the command line."""
    env = os.environ if environ is None else environ
    root = Path(env.get("CAPSTAN_ROOT") or Path.home() / ".capstan").expanduser()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = root / "config.yaml"
    parsed = _ParsedYaml(root)
    defaults = (resources.files("capstan.etc") / "config.yaml").read_text(encoding="utf-8")
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("default", parsed.parse(defaults, "built-in defaults")),
        (str(config_file), parsed.parse(_read_text(config_file), str(config_file))),
        ("environment", {k: env[f"CAPSTAN_{k.upper()}"] for k in KEYS
                         if env.get(f"CAPSTAN_{k.upper()}")}),
        ("command line", {k: v for k, v in (flags or {}).items() if v is not None}),
    ]
    for where, layer in layers:
        for key, value in layer.items():
            if key not in KEYS:
                if where == str(config_file):
                    LOG.warning("%s: unknown key %r ignored", config_file, key)
                continue
            values[key] = _coerce(key, value, where)
            sources[key] = where
    sources["root"] = "environment" if env.get("CAPSTAN_ROOT") else "default"
    parsed.save()
    return Config(root=root, values=values, sources=sources)
