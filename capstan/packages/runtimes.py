"""``meta/run.yaml``: runtimes, config sets and the boot commands they produce.

Semantics per Capstan (reference 6.3-6.5) with its fixes: env tokens are sorted,
unknown keys and wrong types are errors, a lone config set is the default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capstan.core.errors import InputError
from capstan.core.yamlfile import line_of

__all__ = ["RUNTIMES", "ConfigSet", "RunConfig", "Runtime", "boot_command", "parse_run"]


@dataclass(frozen=True)
class Runtime:
    """One runtime Capstan knows."""

    name: str
    description: str
    depends: tuple[str, ...]
    keys: Mapping[str, type]  # besides env and base
    base: str | None = None  # the implicit base config set


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (  # in Capstan's order
    Runtime("native", "Run arbitrary command inside OSv", (), {"bootcmd": str}),
    Runtime("node", "Run JavaScript NodeJS 4.4.5 application", ("node-4.4.5",),
            {"main": str, "node_args": list, "args": list, "shell": bool}, "node-4.4.5:node"),
    Runtime("java", "Run Java application", ("openjdk8-zulu-compact1",),
            {"main": str, "classpath": list, "xms": str, "xmx": str, "jvm_args": list,
             "args": list}, "openjdk8-zulu-compact1:java"),
    Runtime("python", "Run Python 2.7 application", ("python-2.7",),
            {"main": str, "python_args": list, "args": list, "shell": bool},
            "python-2.7:python"),
)}
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class ConfigSet:
    """One entry of ``config_set``."""

    name: str
    values: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)
    base: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """A parsed ``meta/run.yaml``."""

    package: str
    runtime: Runtime
    config_sets: Mapping[str, ConfigSet]
    default: tuple[str, ...] = ()

    def default_boot(self) -> tuple[str, ...]:
        """``config_set_default``, or the only config set when there is one."""
        if self.default:
            return self.default
        return tuple(self.config_sets) if len(self.config_sets) == 1 else ()


def parse_run(data: Any, package: str, where: str) -> RunConfig:
    """Validate the YAML data of a run.yaml (*where* names it in errors)."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with runtime and config_set")
    unknown = sorted(set(map(str, data)) - {"runtime", "config_set", "config_set_default"})
    if unknown:
        raise InputError(f"{where}{line_of(where, unknown[0])}: unknown key '{unknown[0]}'")
    runtime = RUNTIMES.get(str(data.get("runtime", "")))
    if runtime is None:
        raise InputError(f"{where}: unknown runtime '{data.get('runtime')}' "
                         f"(one of {', '.join(RUNTIMES)})")
    sets = data.get("config_set")
    if not isinstance(sets, dict) or not sets:
        raise InputError(f"{where}: at least one config_set must be provided")
    parsed = {str(k): _config_set(str(k), v, runtime, f"{where}: config_set '{k}'")
              for k, v in sets.items()}
    default = data.get("config_set_default") or ""
    names = tuple(n.strip() for n in str(default).split(",") if n.strip())
    for n in names:
        if n not in parsed:
            raise InputError(f"{where}: config_set_default names unknown config set '{n}'")
    return RunConfig(package, runtime, parsed, names)


def _config_set(name: str, raw: Any, runtime: Runtime, where: str) -> ConfigSet:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping")
    values = {str(key): _value(str(key), value, runtime, where)
              for key, value in raw.items() if key not in ("env", "base")}
    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise InputError(f"{where}: 'env' must be a mapping")
    env = {str(k): "" if v is None else str(v) for k, v in env.items()}
    for k, v in env.items():
        if _SPACE.search(k) or _SPACE.search(v):
            raise InputError(f"{where}: spaces not allowed in env key/value: '{k}':'{v}'")
    base = raw.get("base")
    if base is not None and (not isinstance(base, str) or ":" not in base):
        raise InputError(f"{where}: 'base' must be in format <pkg_name>:<config_set>")
    cs = ConfigSet(name, values, env, base)
    _validate(cs, runtime, where)
    return cs


def _value(key: str, value: Any, runtime: Runtime, where: str) -> Any:
    """Config-set *key*'s *value*, checked against *runtime* and normalised."""
    kind = runtime.keys.get(key)
    if kind is None:
        raise InputError(f"{where}: unknown key '{key}' for runtime {runtime.name}")
    if kind is list and isinstance(value, str):
        value = [value]
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind):
        raise InputError(f"{where}: '{key}' must be a {kind.__name__}")
    return [str(v) for v in value] if isinstance(value, list) else value


def _validate(cs: ConfigSet, runtime: Runtime, where: str) -> None:
    v = cs.values
    if runtime.name == "native":
        if not cs.base and not v.get("bootcmd"):
            raise InputError(f"{where}: 'bootcmd' must be provided")
        return
    custom = cs.base is not None and not (runtime.name == "java"
                                          and cs.base.split(":")[0].startswith("openjdk"))
    own = [k for k in runtime.keys if k in v]
    if custom and own:
        raise InputError(f"{where}: incompatible arguments specified [{','.join(own)}] for "
                         "custom 'base'")
    if custom:
        return
    if v.get("shell"):
        bad = [k for k in ("main", "args") if k in v] + \
              [k for k in ("MAIN", "ARGS") if cs.env.get(k)]
        if bad:
            raise InputError(f"{where}: incompatible arguments specified [{','.join(bad)}] "
                             "for shell=true")
    elif not v.get("main"):
        raise InputError(f"{where}: 'main' must be provided")


def _defaults(cs: ConfigSet, runtime: Runtime) -> dict[str, str]:
    """The runtime's env defaults for *cs* (reference 6.4)."""
    v = cs.values
    if runtime.name == "java":
        if cs.base and not cs.base.split(":")[0].startswith("openjdk"):
            return {}
        jvm = list(v.get("jvm_args", []))
        if str(v.get("main", "")).endswith(".jar") and "-jar" not in jvm:
            jvm.append("-jar")
        return {"XMS": v.get("xms", ""), "XMX": v.get("xmx", ""),
                "CLASSPATH": ":".join(v.get("classpath", ["/"])),
                "JVM_ARGS": " ".join(jvm) or "-Dx=y", "MAIN": v.get("main", ""),
                "ARGS": " ".join(v.get("args", []))}
    if runtime.name in ("node", "python"):
        dummy = "--" if runtime.name == "node" else "-O"
        key = f"{runtime.name.upper()}_ARGS"
        if v.get("shell"):
            return {key: " ".join(v.get(key.lower(), [])) or dummy,
                    "MAIN": "-" if runtime.name == "python" else "", "ARGS": ""}
        return {key: " ".join(v.get(key.lower(), [])) or dummy, "MAIN": v.get("main", ""),
                "ARGS": " ".join(v.get("args", []))}
    return {}


def boot_command(table: Mapping[str, RunConfig], package: str, name: str) -> str:
    """The resolved ``/run/<name>`` script of *package*'s config set *name*."""
    env: dict[str, str] = {}
    seen: list[str] = []
    while True:
        seen.append(f"{package}:{name}")
        config = table[package]
        cs = config.config_sets[name]
        own = dict(cs.env)
        shell = bool(cs.values.get("shell"))
        for key, value in _defaults(cs, config.runtime).items():
            # only non-empty defaults, but shell mode sets MAIN and ARGS even when empty
            if key not in own and (value or (shell and key in ("MAIN", "ARGS"))):
                own[key] = value
        for key, value in own.items():
            env.setdefault(key, value)
        base = cs.base or config.runtime.base  # a user base replaces the runtime's
        if base is None:
            tokens = "".join(f"--env={k}?={v} " for k, v in sorted(env.items()))
            return tokens + str(cs.values.get("bootcmd", ""))
        package, _, name = base.partition(":")
        if f"{package}:{name}" in seen:
            raise InputError(f"config set inheritance cycle: {' -> '.join(seen)} -> {base}")
        if package not in table:
            raise InputError(f"Failed to inherit from '{package}': package not included or "
                             "has no meta/run.yaml")
        if name not in table[package].config_sets:
            raise InputError(f"Failed to inherit '{package}:{name}': config_set does not exist")
