"""The cases of ``capstan test``: from the command line or a ``capstan-tests.yaml``.

A file is a mapping with a ``tests:`` list; its other keys (``image``,
``timeout``, ...) are defaults for every case::

    image: hello
    timeout: 30
    tests:
      - name: greets
        expect: ["Hello", "bye"]
      - name: fails with 3
        execute: /hello --fail
        exit: 3
        reject: Traceback

Every value is checked before anything boots: patterns must compile, the exit
status is 0-255, the timeout positive, names printable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan.core import yamlfile
from capstan.core.errors import CapstanError, InputError, UsageError

__all__ = ["DEFAULT_TIMEOUT", "Case", "case_from", "load_cases", "single_case"]

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_PATTERN = 1000  # characters of one regular expression
MAX_NAME = 200
MAX_STATUS = 255
MAX_CASES = 1000
_NAME = re.compile(r"[^\x00-\x1f\x7f]+")
_LISTS = ("expect", "reject", "boot", "env")
_SCALARS = ("name", "image", "execute", "memory", "networking", "machine", "kernel")
_KEYS = frozenset({*_LISTS, *_SCALARS, "exit", "timeout", "cpus"})
_NETWORKING = ("nat", "none")


@dataclass(frozen=True)
class Case:
    """One test: an image booted with a command line, and what its console must show."""

    name: str
    image: str
    expect: tuple[re.Pattern[str], ...] = ()
    reject: tuple[re.Pattern[str], ...] = ()
    exit: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    execute: str | None = None
    boots: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    memory: str = "1G"
    cpus: int = 1
    networking: str = "nat"
    machine: str | None = None
    kernel: str | None = None


def single_case(options: Mapping[str, Any]) -> Case:
    """The case the command line describes (errors are UsageError)."""
    return case_from(dict(options), "command line", UsageError)


def load_cases(path: Path, defaults: Mapping[str, Any]) -> list[Case]:
    """The cases of the file *path*; *defaults* (the command line's image, timeout...)
    override the file's top-level defaults, and each case's own keys override both."""
    where = str(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read for ever
        raise InputError(f"{where}: not a regular file")
    data = yamlfile.load_strict(path)
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise InputError(f"{where}: expected a mapping with a 'tests:' list")
    tests = data.pop("tests")
    if not tests or len(tests) > MAX_CASES:
        raise InputError(f"{where}: 'tests:' needs 1 to {MAX_CASES} cases")
    base = {**_mapping(data, f"{where}: top level"), **defaults}
    base.pop("name", None)
    cases = []
    for index, item in enumerate(tests, start=1):
        entry = _mapping(item, f"{where}: tests[{index}]")
        merged = {"name": f"case {index}", **base, **entry}
        cases.append(case_from(merged, f"{where}: tests[{index}]", InputError))
    names = [c.name for c in cases]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InputError(f"{where}: two cases are named {twice!r}")
    return cases


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{where}: expected a mapping of option names to values")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: "
                         f"{', '.join(sorted(_KEYS))})")
    return dict(value)


def case_from(values: Mapping[str, Any], where: str, error: type[CapstanError]) -> Case:
    """A checked :class:`Case` of *values* (the keys of a file's case); problems
    raise *error* naming *where*."""
    check = _Checker(where, error)
    image = check.text(values.get("image"), "image")
    if image is None:
        raise error(f"{where}: no image: give IMAGE or an 'image:' key")
    name = check.text(values.get("name"), "name") or image
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise error(f"{where}: invalid name {name[:MAX_NAME]!r}: printable, "
                    f"at most {MAX_NAME} characters")
    networking = check.text(values.get("networking"), "networking") or "nat"
    if networking not in _NETWORKING:
        raise error(f"{where}: networking: one of {', '.join(_NETWORKING)}")
    return Case(name=name, image=image, expect=check.patterns(values.get("expect"), "expect"),
                reject=check.patterns(values.get("reject"), "reject"),
                exit=check.status(values.get("exit")), timeout=check.timeout(values),
                execute=check.text(values.get("execute"), "execute"),
                boots=check.texts(values.get("boot"), "boot"), env=check.env(values.get("env")),
                memory=check.text(values.get("memory"), "memory") or "1G",
                cpus=check.count(values.get("cpus")), networking=networking,
                machine=check.text(values.get("machine"), "machine"),
                kernel=check.text(values.get("kernel"), "kernel"))


@dataclass(frozen=True)
class _Checker:
    """Typed reads of a case's values, each problem an error naming where it is."""

    where: str
    error: type[CapstanError]

    def fail(self, message: str) -> CapstanError:
        return self.error(f"{self.where}: {message}")

    def text(self, value: object, key: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(f"{key}: expected a string")
        return str(value)

    def texts(self, value: object, key: str) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [] if value is None else [value]
        texts = [self.text(v, key) for v in items]
        return tuple(t for t in texts if t is not None)

    def patterns(self, value: object, key: str) -> tuple[re.Pattern[str], ...]:
        compiled = []
        for text in self.texts(value, key):
            if len(text) > MAX_PATTERN:
                raise self.fail(f"{key}: a pattern longer than {MAX_PATTERN} characters")
            try:
                compiled.append(re.compile(text, re.MULTILINE))
            except re.error as err:
                raise self.fail(f"{key}: invalid regular expression {text!r}: {err}") from err
        return tuple(compiled)

    def env(self, value: object) -> tuple[str, ...]:
        if isinstance(value, dict):
            return tuple(f"{k}={self.text(v, 'env') or ''}" for k, v in value.items())
        return self.texts(value, "env")

    def status(self, value: object) -> int | None:
        if value is None:
            return None
        number = _integer(value)
        if number is None or not 0 <= number <= MAX_STATUS:
            raise self.fail(f"exit: expected a status 0-{MAX_STATUS}, not {value!r}")
        return number

    def count(self, value: object) -> int:
        number = 1 if value is None else _integer(value)
        if number is None or number < 1:
            raise self.fail(f"cpus: expected a positive whole number, not {value!r}")
        return number

    def timeout(self, values: Mapping[str, Any]) -> float:
        value = values.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(f"timeout: expected seconds, not {value!r}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_TIMEOUT:
            raise self.fail(f"timeout: expected seconds (0 < S <= {MAX_TIMEOUT:g}), "
                            f"not {value!r}")
        return seconds


def _integer(value: object) -> int | None:
    """*value* as an int (a YAML or command-line integer), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
