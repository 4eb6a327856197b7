"""``capstan config print``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from cliff.lister import Lister

from capstan.commands import app_config


class ConfigPrint(Lister):
    """Show every effective setting and where it came from (secrets as ***)"""

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.doctor import settings

        return ("Key", "Value", "Source"), settings(app_config(self))
