"""``capstan doctor``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from cliff.lister import Lister

from capstan.commands import app_config
from capstan.core.errors import BackendError


class Doctor(Lister):
    """Check what this host can run and print the exact fix for each problem"""

    failed = False

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.doctor import Status, diagnose

        findings = diagnose(app_config(self))
        self.failed = any(f.status is Status.FAIL for f in findings)
        return ("Check", "Status", "Detail", "Fix"), [
            (f.check, f.status.value, f.detail, f.fix) for f in findings]

    def run(self, parsed_args: argparse.Namespace) -> int:
        code = int(super().run(parsed_args) or 0)
        return BackendError.exit_code if self.failed and code == 0 else code
