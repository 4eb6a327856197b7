"""Bounded YAML: every YAML input pycapstan reads goes through here.

Documents are limited in size (:data:`MAX_BYTES`), nesting (:data:`MAX_DEPTH`),
alias uses (:data:`MAX_ALIASES`) and in their size once aliases are expanded
(:data:`MAX_EXPANDED` characters and nodes): a "billion laughs" file is refused at
once instead of taking gigabytes when a caller walks or prints it. Only plain
YAML types are built (a SafeLoader). Strict loading also refuses a mapping key
given twice. Every problem is one error line ``WHERE:LINE: message``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from capstan.core import textfile
from capstan.core.errors import CapstanError, InputError, NotFound

__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_EXPANDED", "line_of", "load_cached",
           "load_file", "load_strict", "load_text", "read_bounded"]

LOG = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIASES = 256
MAX_EXPANDED = 4 * MAX_BYTES


class _Refused(yaml.YAMLError):
    """A document over one of the bounds."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that bounds nesting, alias uses and the expanded document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases: refusing to expand them",
                               self._mark())
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self._mark())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _mark(self) -> yaml.Mark:
        """Where the next event starts."""
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        return mark

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None:
            _expanded(node, {}, set())
        return node


def _expanded(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Characters plus nodes of *node* with its aliases expanded (refused past the bound)."""
    ident = id(node)
    if ident in sizes:
        return sizes[ident]
    if ident in open_:
        raise _Refused("an alias refers to its own anchor (a recursive document)",
                       node.start_mark)
    open_.add(ident)
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(child, sizes, open_) for child in node.value)
    else:
        size = 1 + sum(_expanded(k, sizes, open_) + _expanded(v, sizes, open_)
                       for k, v in node.value)
    open_.discard(ident)
    if size > MAX_EXPANDED:
        raise _Refused(f"larger than {MAX_EXPANDED} characters once its aliases are "
                       "expanded: refusing it", node.start_mark)
    sizes[ident] = size
    return size


class _StrictLoader(_BoundedLoader):
    """A bounded loader that also refuses a mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_text(text: str | bytes, where: str, *, strict: bool = False,
              error: type[CapstanError] = InputError) -> Any:
    """Parse the YAML *text* read from *where* (a file name or URL) within the bounds.

    Any problem raises *error* (InputError, exit 65, unless told otherwise) as one
    line ``WHERE[:LINE]: message``. *strict* also refuses duplicate keys.
    """
    if len(text) > MAX_BYTES:
        raise error(f"{where}: larger than {MAX_BYTES} bytes: refusing to parse it")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    loader: _BoundedLoader | None = None
    try:  # the reader refuses control characters as soon as it is made
        loader = (_StrictLoader if strict else _BoundedLoader)(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{where}{line}: {_one_line(err.problem or err.context)}") from err
    except _Refused as err:
        mark = err.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{where}{line}: {err.problem}") from err
    except yaml.YAMLError as err:
        raise error(f"{where}: {_one_line(str(err))}") from err
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        # e.g. an integer of 10,000 digits or a date like 2024-02-31
        raise error(f"{where}: invalid value: {_one_line(str(err))}") from err
    finally:
        if loader is not None:
            loader.dispose()


def _one_line(text: str | None) -> str:
    return " ".join((text or "invalid YAML").split())


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
