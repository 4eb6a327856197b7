"""``capstan fleet up|down|ps|logs`` (also ``capstan up``, ``down``, ``ps``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cliff.command import Command
from cliff.lister import Lister

from capstan.commands import app_config

_OUTCOME = ("Instance", "Service", "Host", "Action", "Result", "Detail")


def _file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-F", "--file", type=Path, default=Path("capstan-fleet.yaml"),
                        help="fleet file (capstan-fleet.yaml)")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _jobs(parser: argparse.ArgumentParser) -> None:
    from capstan.services import fleet

    parser.add_argument("-j", "--jobs", type=_at_least_one, default=fleet.JOBS,
                        help=f"instances handled at once ({fleet.JOBS})")
    parser.add_argument("-t", "--timeout", type=float, default=30,
                        help="seconds to wait for a graceful power-off before a stop "
                             "escalates (30)")


class _OutcomeLister(Lister):
    """A lister whose exit status is the worst of its outcomes."""

    exit_code = 0
    hosts_down: list[str]
    failed: bool

    def rows(self, outcomes: Iterable[Any]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        outcomes = list(outcomes)
        self.exit_code = max((o.exit_code for o in outcomes), default=0)
        self.hosts_down = list(dict.fromkeys(o.detail for o in outcomes
                                             if o.result == "unreachable"))
        self.failed = any(o.result == "failed" for o in outcomes)
        return _OUTCOME, [(o.instance, o.service, o.host, o.action.value, o.result, o.detail)
                          for o in outcomes]

    def run(self, parsed_args: argparse.Namespace) -> int:
        self.hosts_down = []
        self.failed = False
        code = int(super().run(parsed_args) or 0)
        _report(self.app.stderr, self.hosts_down)
        if self.failed:
            self.app.stderr.write("capstan: some instances failed (see Result)\n")
        return code or self.exit_code


def _report(stderr: Any, problems: Iterable[object]) -> None:
    """One ``capstan:`` line per host that did not answer."""
    for problem in problems:
        stderr.write(f"capstan: {' '.join(str(problem).split())}\n")


class FleetUp(_OutcomeLister):
    """Start a fleet, or make it match its file (idempotent)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _file(parser)
        _jobs(parser)
        parser.add_argument("--dry-run", action="store_true",
                            help="show what would be done, do nothing")
        parser.add_argument("--keep-going", action="store_true",
                            help="on a failure keep the rest (default: roll back this up)")
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import fleet

        spec = fleet.load_fleet(parsed_args.file)
        return self.rows(fleet.up(app_config(self), spec, fleet.UpOptions(
            jobs=parsed_args.jobs, keep_going=parsed_args.keep_going,
            dry_run=parsed_args.dry_run, timeout=parsed_args.timeout)))


class FleetDown(_OutcomeLister):
    """Stop and delete every instance of a fleet"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _file(parser)
        _jobs(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import fleet

        spec = fleet.load_fleet(parsed_args.file)
        return self.rows(fleet.down(app_config(self), spec, timeout=parsed_args.timeout,
                                    jobs=parsed_args.jobs))


class FleetPs(Lister):
    """List a fleet's instances, their hosts and their state"""

    problems: list[str]
    exit_code: int

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _file(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import fleet

        rows = fleet.ps(app_config(self), fleet.load_fleet(parsed_args.file))
        self.problems = list(dict.fromkeys(r.note for r in rows if r.note))
        self.exit_code = max((r.exit_code for r in rows), default=0)
        return (("Instance", "Service", "Host", "Status", "Address", "Ports", "PID", "Driver"),
                [(r.instance, r.service, r.host, r.state, r.address, r.ports, r.pid or "",
                  r.driver) for r in rows])

    def run(self, parsed_args: argparse.Namespace) -> int:
        self.problems = []
        self.exit_code = 0
        code = int(super().run(parsed_args) or 0)
        _report(self.app.stderr, self.problems)
        return code or self.exit_code


class FleetLogs(Command):
    """Print the console logs of a fleet, each line prefixed with its instance"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _file(parser)
        parser.add_argument("-f", "--follow", action="store_true",
                            help="keep printing until every instance has stopped")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services import fleet

        problems = fleet.logs(app_config(self), fleet.load_fleet(parsed_args.file),
                              sys.stdout.buffer, follow=parsed_args.follow)
        sys.stdout.flush()
        _report(self.app.stderr, problems)
        return max((p.exit_code for p in problems), default=0)
