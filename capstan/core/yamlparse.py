"""The bounded YAML parser behind :mod:`capstan.core.yamlfile` (which documents the bounds),
imported only when a document is not in its cache: loading PyYAML takes ~8 ms."""

from __future__ import annotations

from typing import Any

import yaml

from capstan.core.errors import CapstanError
from capstan.core.limits import YAML_ALIASES as MAX_ALIASES
from capstan.core.limits import YAML_DEPTH as MAX_DEPTH
from capstan.core.limits import YAML_EXPANDED as MAX_EXPANDED

__all__ = ["dump", "parse"]


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


def parse(text: str, where: str, *, strict: bool, error: type[CapstanError]) -> Any:
    """The document *text* read from *where*, within the bounds; *error* on any problem."""
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



def dump(data: Any, *, sort_keys: bool) -> str:
    """*data* as block-style YAML."""
    return yaml.safe_dump(data, sort_keys=sort_keys)
