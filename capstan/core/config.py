"""Configuration: flags > ``CAPSTAN_*`` environment > config.yaml > etc/ defaults."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstan.core.errors import ConfigError, NotFound
from capstan.core.textfile import read_bounded
from capstan.core.yamlfile import cache_in, load_text

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

LOG = logging.getLogger(__name__)

__all__ = ["KEYS", "SETTINGS", "Config", "Setting", "installed_drivers", "load",
           "own_entry_points"]

_TRUE = {"1", "t", "true", "yes", "on"}
_MAX_CONFIG_BYTES = (1 << 20) + 1  # the YAML bound plus one: a longer file is refused
_FALSE = {"0", "f", "false", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One configuration key; it also reads the environment variable ``CAPSTAN_<KEY>``."""

    key: str
    type: type = str  # str or bool
    default: str | bool = ""
    secret: bool = False  # never printed
    help: str = ""
    choices: tuple[str, ...] = ()

    def coerce(self, value: Any, where: str) -> Any:
        """*value* (read from *where*) as this setting's type, or ConfigError."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ConfigError(f"{where}: {self.key} must be true or false, not {value!r}")
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: {self.key} must be a string, not {value!r}")
        text = str(value)
        if self.choices and text not in self.choices:
            raise ConfigError(f"{where}: {self.key} must be one of {', '.join(self.choices)}, "
                              f"not {text!r}")
        return text


#: the keys of Capstan itself; each driver declares its own (``Driver.settings``, named
#: ``<driver>_...``), resolved when the driver is loaded (:meth:`Config.with_settings`)
SETTINGS: tuple[Setting, ...] = (
    Setting("repo_url", help="S3/HTTP repository URL"),
    Setting("release_tag", help="GitHub release: any, latest or a tag"),
    Setting("disable_kvm", bool, False, help="never use KVM (or HVF)"),
    Setting("hypervisor", help="driver used when -p is not given"),
    Setting("loader", help="loader used by compose"),
    Setting("disk_format", help="output disk format of compose"),
    Setting("repositories", help="remote repositories searched in order"),
    Setting("github_api", help="GitHub API URL"),
    Setting("github_repo", help="GitHub repository whose releases hold packages"),
    Setting("github_token", secret=True, help="GitHub token"),
)
#: key -> type of Capstan's own keys
KEYS: dict[str, type] = {s.key: s.type for s in SETTINGS}
_ENV = "CAPSTAN_"


@dataclass(frozen=True)
class Config:
    """The effective settings, each with the place it came from."""

    root: Path
    values: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict)
    #: the known keys (Capstan's, and those of the drivers resolved so far)
    settings: Mapping[str, Setting] = field(default_factory=dict)
    #: every layer as read, lowest first, for keys resolved later
    layers: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def with_settings(self, settings: Iterable[Setting], *, complete: bool = False) -> Config:
        """This configuration with *settings* (a driver's keys) resolved too.

        A key of config.yaml that is still unknown but named like one of the new keys
        (``qemu_acel`` beside ``qemu_accel``) is reported (a warning: it is ignored);
        *complete* says every installed driver's keys are now known, so every unknown key
        is.
        """
        new = [s for s in settings if s.key not in self.settings]
        if not new and not complete:
            return self
        known = {**self.settings, **{s.key: s for s in new}}
        prefixes = ("",) if complete else tuple({_prefix(s.key) for s in new})
        return _resolve(self.root, self.layers, known, self.sources["root"],
                        report=lambda key: key.startswith(prefixes))

    def with_layer(self, where: str, values: Mapping[str, Any]) -> Config:
        """This configuration with *values* (read from *where*) above every other layer."""
        return _resolve(self.root, (*self.layers, (where, values)), self.settings,
                        self.sources["root"])

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


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    """The mapping of settings in *text*; ConfigError naming *where* and the line if it is
    not one (parsed documents are cached: see :func:`capstan.core.yamlfile.cache_in`)."""
    data = load_text(text, where, error=ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    return data


def _read_text(path: Path) -> str:
    try:
        return read_bounded(path, ConfigError, _MAX_CONFIG_BYTES).decode("utf-8")
    except NotFound:
        return ""
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def load(flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting; *flags* holds values given on the command line."""
    env = os.environ if environ is None else environ
    root = Path(env.get("CAPSTAN_ROOT") or Path.home() / ".capstan").expanduser()
    config_file = root / "config.yaml"
    cache_in(root / "cache")
    defaults = (resources.files("capstan.etc") / "config.yaml").read_text(encoding="utf-8")
    layers = (
        ("default", _parse_yaml(defaults, "built-in defaults")),
        (str(config_file), _parse_yaml(_read_text(config_file), str(config_file))),
        ("environment", {k[len(_ENV):].lower(): v for k, v in env.items()
                         if k.startswith(_ENV) and k.isupper() and v}),
        ("command line", {k: v for k, v in (flags or {}).items() if v is not None}),
    )
    known = {s.key: s for s in SETTINGS}
    drivers = _Drivers()  # a driver's keys are checked as it loads
    config = _resolve(root, layers, known, "environment" if env.get("CAPSTAN_ROOT") else "default",
                      report=lambda key: not drivers.any(
                          lambda names: key.startswith(tuple(map(_prefix, names)))))
    _check_hypervisor(config, drivers)
    return config


@functools.cache
def own_entry_points(group: str) -> tuple[EntryPoint, ...]:
    """pycapstan's own entry points of *group* (its commands, its drivers), from its
    distribution's metadata alone."""
    import importlib.metadata

    return tuple(importlib.metadata.distribution("pycapstan").entry_points.select(group=group))


class _Drivers:
    """The installed drivers' names, looked up no further than needed: pycapstan's own from
    its metadata, every distribution's (stevedore's scan, several ms) only for a name or a
    key that is none of pycapstan's."""

    def __init__(self) -> None:
        self.names = tuple(sorted(ep.name for ep in own_entry_points("capstan.drivers")))
        self._complete = False

    def any(self, test: Callable[[tuple[str, ...]], bool]) -> bool:
        """Whether *test* holds for the names; all of them once it fails for pycapstan's."""
        if test(self.names):
            return True
        if not self._complete:
            self.names, self._complete = installed_drivers(), True
            return test(self.names)
        return False


def installed_drivers() -> tuple[str, ...]:
    """The names of the installed drivers (``capstan.drivers`` entry points, from
    stevedore's cache), none of them imported."""
    from stevedore.named import NamedExtensionManager

    eps = NamedExtensionManager("capstan.drivers", names=[]).list_entry_points()
    return tuple(sorted({ep.name for ep in eps}))


def _check_hypervisor(config: Config, drivers: _Drivers) -> None:
    """ConfigError unless ``hypervisor`` names an installed driver."""
    name = config.values["hypervisor"]
    if not drivers.any(lambda names: name in names):
        raise ConfigError(f"{config.sources['hypervisor']}: hypervisor: '{name}' is not an "
                          f"installed driver (installed: {', '.join(drivers.names)})")


def _prefix(name: str) -> str:
    """The start of a driver's keys: ``qemu_`` of driver ``qemu`` and of key ``qemu_accel``,
    ``cloud_hypervisor_`` of driver ``cloud-hypervisor``."""
    return (name if "-" in name else name.split("_", 1)[0]).replace("-", "_") + "_"


_warned: set[tuple[str, str]] = set()


def _unknown(where: str, key: str) -> None:
    """Warn, once per process, that *key* of config file *where* is ignored."""
    if (where, key) not in _warned:
        _warned.add((where, key))
        LOG.warning("%s: unknown key %r ignored", where, key)


def _resolve(root: Path, layers: tuple[tuple[str, Mapping[str, Any]], ...],
             known: Mapping[str, Setting], root_source: str, *,
             report: Callable[[str], bool] = lambda key: False) -> Config:
    """The values of the *known* keys: each from its highest layer, else its default;
    an unknown key of config.yaml is reported (a warning) if *report* says so."""
    values: dict[str, Any] = {k: s.default for k, s in known.items()}
    sources: dict[str, str] = dict.fromkeys(known, "default")
    for where, layer in layers:
        for key, value in layer.items():
            setting = known.get(key)
            if setting is None:
                if where == str(root / "config.yaml") and report(str(key)):
                    _unknown(where, key)
                continue
            values[key] = setting.coerce(value, where)
            sources[key] = where
    sources["root"] = root_source
    return Config(root=root, values=values, sources=sources, settings=known, layers=layers)
