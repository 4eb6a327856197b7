"""Strict YAML files: duplicate keys refused, errors name the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from capstan.errors import InputError, NotFound

__all__ = ["load_strict"]


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_strict(path: Path) -> Any:
    """Parse *path*; any problem is an InputError ``FILE:LINE: message``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise NotFound(f"no such file: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: {err}") from err
