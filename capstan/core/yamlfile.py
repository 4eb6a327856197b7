"""Bounded YAML: every YAML input pycapstan reads goes through here.

Documents are limited in size (:data:`MAX_BYTES`), nesting (:data:`MAX_DEPTH`),
alias uses (:data:`MAX_ALIASES`) and in their size once aliases are expanded
(:data:`MAX_EXPANDED` characters and nodes): a "billion laughs" file is refused at
once instead of taking gigabytes when a caller walks or prints it. Only plain
YAML types are built (a SafeLoader). Strict loading also refuses a mapping key
given twice. Every problem is one error line ``WHERE:LINE: message``.

Parsed documents are kept by the SHA-256 of their text in ``$CAPSTAN_ROOT/cache/yaml.json``
(see :func:`cache_in`), so that a command whose YAML files did not change loads no YAML
parser (~8 ms): only values that JSON gives back exactly (same types: no dates, no
non-string keys) are kept, each with a check of its own, the last :data:`MAX_KEPT`. The
cache is advisory: a lost, damaged or foreign entry costs one parse. It is read only as a
file of this user in a directory no one else can write (its checks tell damage, not forgery).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from capstan.core import textfile
from capstan.core.errors import CapstanError, InputError, NotFound
from capstan.core.limits import YAML_ALIASES, YAML_BYTES, YAML_DEPTH, YAML_EXPANDED

__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_EXPANDED", "MAX_KEPT", "cache_in",
           "dump", "line_of", "load_cached", "load_file", "load_strict", "load_text",
           "read_bounded"]

LOG = logging.getLogger(__name__)

MAX_BYTES = YAML_BYTES
MAX_DEPTH = YAML_DEPTH
MAX_ALIASES = YAML_ALIASES
MAX_EXPANDED = YAML_EXPANDED
MAX_KEPT = 128  # documents kept in the cache, the last parsed
_MAX_VALUE = 64 << 10  # bytes of JSON of a kept document
_VERSION = 1


def load_text(text: str | bytes, where: str, *, strict: bool = False,
              error: type[CapstanError] = InputError) -> Any:
    """Parse the YAML *text* read from *where* (a file name or URL) within the bounds.

    Any problem raises *error* (InputError, exit 65, unless told otherwise) as one
    line ``WHERE[:LINE]: message``. *strict* also refuses duplicate keys.
    """
    if len(text) > MAX_BYTES:
        raise error(f"{where}: larger than {MAX_BYTES} bytes: refusing to parse it")
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    key = hashlib.sha256((b"strict\0" if strict else b"plain\0") + raw).hexdigest()
    found, value = _store.get(key) if _store else (False, None)
    if found:
        return value
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    from capstan.core.yamlparse import parse

    value = parse(text, where, strict=strict, error=error)
    if _store:
        _store.put(key, value)
    return value


def dump(data: Any, *, sort_keys: bool = False) -> str:
    """*data* as block-style YAML (kept in the cache too: the same data needs no parser)."""
    key = ""
    with contextlib.suppress(TypeError, ValueError):
        text = json.dumps([sort_keys, data], allow_nan=False)
        if _exact([sort_keys, data], json.loads(text)):
            key = "dump:" + hashlib.sha256(text.encode()).hexdigest()
    found, kept = _store.get(key) if _store and key else (False, None)
    if found and isinstance(kept, str):
        return kept
    from capstan.core.yamlparse import dump as dump_yaml

    out = dump_yaml(data, sort_keys=sort_keys)
    if _store and key:
        _store.put(key, out)
    return out


class _Store:
    """The documents kept in the JSON file *path* (written only if its root exists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(_read_own(path)) if _private(path.parent) else None
        except (OSError, ValueError):
            data = None
        entries = data.get("entries") if isinstance(data, dict) and \
            data.get("version") == _VERSION else None
        self.entries: dict[str, Any] = entries if isinstance(entries, dict) else {}
        self.puts = 0
        self.dirty = self.at_exit = False

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, a fresh copy of the document kept under *key*) or (False, None)."""
        item = self.entries.get(key)
        if not isinstance(item, list) or len(item) != 2:  # noqa: PLR2004
            return False, None
        try:
            text = json.dumps(item[0], allow_nan=False)
        except ValueError:
            return False, None
        if item[1] != _check(key, text):
            return False, None
        return True, json.loads(text)

    def put(self, key: str, value: Any) -> None:
        """Keep *value* under *key* if JSON gives it back exactly, and save: at the 1st,
        2nd, 4th, ... put and at exit (n new documents: log2(n) writes, not n)."""
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return
        if len(text) > _MAX_VALUE or not _exact(value, json.loads(text)):
            return
        self.entries.pop(key, None)
        self.entries[key] = [json.loads(text), _check(key, text)]
        while len(self.entries) > MAX_KEPT:
            del self.entries[next(iter(self.entries))]
        self.puts += 1
        self.dirty = True
        if not self.puts & (self.puts - 1):
            self.save()
        elif not self.at_exit:
            self.at_exit = True
            atexit.register(self._save_at_exit)

    def _save_at_exit(self) -> None:
        if self.dirty and _store is self:
            self.save()

    def save(self) -> None:
        """Write the documents kept to the file."""
        self.dirty = False
        if not self.path.parent.parent.is_dir():
            return  # no root yet: reading never creates one
        from capstan.core.fs import atomic_write, sweep

        with contextlib.suppress(OSError, CapstanError):  # a read-only root works uncached
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            if not _private(self.path.parent):
                return  # another user could swap what is written: uncached
            sweep(self.path.parent)  # the temporaries of a write killed midway
            data = {"version": _VERSION, "entries": self.entries}
            atomic_write(self.path, json.dumps(data).encode(), 0o600, sync=False)


def _private(folder: Path) -> bool:
    """Whether *folder* is a directory of this user that no one else can write."""
    try:
        st = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _read_own(path: Path) -> bytes:
    """The cache file *path*, if it is a regular file of this user (the check of an entry
    tells damage, not forgery: a file someone else wrote is not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise OSError("not a cache file of this user")
        return f.read(MAX_KEPT * _MAX_VALUE)


def _check(key: str, text: str) -> str:
    return hashlib.sha256(f"{key}\0{text}".encode()).hexdigest()[:32]


def _exact(a: Any, b: Any) -> bool:
    """Whether *a* and *b* are equal with the same types throughout (1 is not 1.0 or True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_exact(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_exact, a, b))
    return bool(a == b)


_store: _Store | None = None


def cache_in(folder: Path) -> None:
    """Keep parsed documents in ``folder/yaml.json`` (``$CAPSTAN_ROOT/cache``) from now on
    (what it holds now is read: once per command)."""
    global _store
    _store = _Store(folder / "yaml.json")


def load_file(path: Path, where: str | None = None, *, strict: bool = False) -> Any:
    """Parse the file *path* (named *where* in errors, by default its path) within the
    bounds; errors are InputError (NotFound when it does not exist)."""
    return load_text(read_bounded(path, InputError), where or str(path), strict=strict)


def load_strict(path: Path) -> Any:
    """Parse the file *path* (bounded, duplicate keys refused); errors are InputError."""
    return load_file(path, strict=True)


def load_cached(path: Path, what: str = "cached file") -> dict[str, Any]:
    """The mapping in *path*, a cache pycapstan wrote; a damaged or hostile one is
    ignored with a warning (an absent one quietly), as ``{}``."""
    try:
        data = load_file(path)
    except NotFound:
        return {}
    except CapstanError as err:
        LOG.warning("ignoring a damaged %s: %s", what, err)
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        LOG.warning("ignoring a damaged %s: %s is not a mapping", what, path)
        return {}
    return data


def line_of(where: str, key: str) -> str:
    """``:LINE`` of the top-level *key* in the file *where*, when it can be found."""
    try:
        text = read_bounded(Path(where), CapstanError).decode(errors="replace")
    except CapstanError:
        return ""
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"{re.escape(key)}\s*:", line):
            return f":{number}"
    return ""


def read_bounded(path: Path, error: type[CapstanError], *, follow: bool = True) -> bytes:
    """At most :data:`MAX_BYTES` + 1 bytes of the regular file *path* (a longer file is
    refused later); see :func:`capstan.core.textfile.read_bounded`."""
    return textfile.read_bounded(path, error, MAX_BYTES + 1, follow=follow)
