"""``capstan config print``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from cliff.lister import Lister

from capstan.commands import app_config
from capstan.core.config import KEYS

SECRETS = {"github_token", "vsphere_password"}


class ConfigPrint(Lister):
    """Show every effective setting and where it came from"""

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        config = app_config(self)
        rows = [("root", str(config.root), config.sources["root"])]
        rows += [(key, "***" if key in SECRETS and config.values[key] else config.values[key],
                  config.sources[key]) for key in KEYS]
        return ("Key", "Value", "Source"), rows
