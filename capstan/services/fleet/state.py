"""The fleet record: ``<root>/fleets/<name>.json`` says what ``up`` made and on which host.

It holds no settings and no secrets (those come from the fleet file and the environment),
so ``ps`` and ``down`` work from any machine with the record, the file and the credentials.
Written atomically, under ``<root>/fleets/<name>.lock``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from capstan.core.config import Config
from capstan.core.errors import InputError
from capstan.core.fs import atomic_write
from capstan.core.names import is_valid
from capstan.services.fleet.hosts import LOCAL
from capstan.services.fleet.parse import Fleet

__all__ = ["Record", "load", "lock", "save"]


@dataclass
class Record:
    """What ``up`` made: instance name -> service, digest, driver and host."""

    file: str
    instances: dict[str, dict[str, str]] = field(default_factory=dict)

    def host(self, name: str) -> str:
        """The host holding instance *name* (records before hosts: the local one)."""
        return self.instances[name].get("host") or LOCAL


def _path(config: Config, fleet: Fleet) -> Path:
    return config.root / "fleets" / f"{fleet.name}.json"


def lock(config: Config, fleet: Fleet) -> FileLock:
    """The lock of the fleet's record."""
    folder = config.root / "fleets"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{fleet.name}.lock"))


def load(config: Config, fleet: Fleet) -> Record:
    """The record (empty when there is none); a damaged one is an InputError."""
    path = _path(config, fleet)
    try:
        data = json.loads(path.read_text())
        record = Record(data["file"], dict(data["instances"]))
        for name, entry in record.instances.items():
            _check(name, entry)
        return record
    except FileNotFoundError:
        return Record(str(fleet.path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"fleet state {path} is damaged: {err}") from err


def _check(name: str, entry: object) -> None:
    """A record entry names a valid instance and host, else ValueError."""
    if not isinstance(entry, dict) or "service" not in entry \
            or not all(isinstance(v, str) for v in entry.values()):
        raise ValueError("an entry is not a mapping of strings with 'service'")
    if not is_valid(name, "instance"):
        raise ValueError(f"invalid instance name {ascii(name)[:72]}")
    if not is_valid(entry.get("host") or LOCAL, "host"):
        raise ValueError(f"invalid host name {ascii(entry['host'])[:72]}")


def save(config: Config, fleet: Fleet, record: Record) -> None:
    """Write the record atomically, or remove it when it holds nothing."""
    path = _path(config, fleet)
    if record.instances:
        atomic_write(path, json.dumps({"file": record.file, "instances": record.instances},
                                      indent=2).encode())
    else:
        path.unlink(missing_ok=True)
