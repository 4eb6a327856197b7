"""Values a command hands to its table that need more than one line."""

from __future__ import annotations

__all__ = ["Paragraphs"]


class Paragraphs(str):
    """Text shown on several lines (a package's README): when the CLI escapes control
    characters in table cells, the line breaks of a ``Paragraphs`` value survive."""

    __slots__ = ()
