"""``capstan test`` and ``capstan bench boot``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cliff.lister import Lister

from capstan.commands import app_config
from capstan.core.errors import UsageError

#: what ``capstan test`` exits with when a case failed (not an error of capstan's)
TESTS_FAILED = 1
_CASE_OPTIONS = ("expect", "reject", "exit", "execute", "env", "boot")
_DEFAULT_FILE = Path("capstan-tests.yaml")


class Test(Lister):
    """Boot an image, wait for console patterns and check its exit status (CI tests)"""

    failed = False
    _summary = ""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", nargs="?", metavar="IMAGE|NAME",
                            help="image (repository name or file); a file's cases' default")
        parser.add_argument("--tests", metavar="FILE", type=Path,
                            help="cases from this file (default: ./capstan-tests.yaml "
                                 "when no IMAGE is given)")
        parser.add_argument("--expect", action="append", metavar="REGEX",
                            help="a console pattern to wait for (repeatable: in order)")
        parser.add_argument("--reject", action="append", metavar="REGEX",
                            help="a console pattern that fails the case (repeatable)")
        parser.add_argument("--exit", metavar="N",
                            help="wait for the guest to end with status N")
        parser.add_argument("--timeout", metavar="S", help="seconds per case (60)")
        parser.add_argument("-e", "--execute", help="command line, verbatim")
        parser.add_argument("--boot", action="append", metavar="NAME",
                            help="run configuration /run/NAME (repeatable)")
        parser.add_argument("--env", action="append", metavar="KEY=VALUE",
                            help="environment variable (repeatable)")
        parser.add_argument("-m", "--memory", help="guest memory (1G)")
        parser.add_argument("--machine", choices=("pc", "microvm"), help="QEMU machine")
        parser.add_argument("--kernel", help="kernel ELF booted directly (with microvm)")
        parser.add_argument("-p", "--hypervisor", metavar="DRIVER",
                            help="driver to use (default: config 'hypervisor', qemu)")
        parser.add_argument("-j", "--jobs", type=int, default=1, help="cases at a time (1)")
        parser.add_argument("--junit", metavar="FILE", type=Path,
                            help="also write a JUnit XML report here")
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import testing

        args = parsed_args
        if args.jobs < 1:
            raise UsageError(f"invalid --jobs {args.jobs}: at least 1")
        options = {k: v for k, v in vars(args).items()
                   if k in (*_CASE_OPTIONS, "image", "timeout", "memory", "machine", "kernel")
                   and v is not None}
        file = args.tests or (_DEFAULT_FILE if args.image is None else None)
        if file is not None:
            given = [f"--{k}" for k in _CASE_OPTIONS if k in options]
            if given:
                raise UsageError(f"{given[0]} describes one case: put it in {file}'s cases")
            cases = testing.load_cases(file, options)
        else:
            cases = [testing.single_case(options)]
        suite = testing.run_cases(app_config(self), cases, hypervisor=args.hypervisor,
                                  jobs=args.jobs)
        if args.junit is not None:
            testing.write_junit(suite, args.junit)
        self.failed = not suite.passed
        self._summary = suite.summary()
        return ("Case", "Result", "Seconds", "Status", "Reason"), [
            (o.name, "pass" if o.passed else "FAIL", f"{o.seconds:.2f}",
             "" if o.status is None else o.status, o.reason) for o in suite.outcomes]

    def run(self, parsed_args: argparse.Namespace) -> int:
        code = int(super().run(parsed_args) or 0)
        if getattr(parsed_args, "formatter", "table") == "table":
            self.app.stdout.write(self._summary + "\n")
        else:
            self.app.stderr.write(self._summary + "\n")
        return TESTS_FAILED if self.failed and code == 0 else code


class BenchBoot(Lister):
    """Time an image's boots through capstan beside bare QEMU with the same argv"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="IMAGE|NAME",
                            help="image (repository name or file)")
        parser.add_argument("-n", "--runs", type=int, default=20, help="boots each way (20)")
        parser.add_argument("--until", metavar="REGEX",
                            help="the console marker timed (default: the guest's power-off)")
        parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                            help="seconds per boot (60)")
        parser.add_argument("-e", "--execute", help="command line, verbatim "
                                                    "(with --bootchart: OSv's own figures)")
        parser.add_argument("-m", "--memory", default="256M", help="guest memory (256M)")
        parser.add_argument("--machine", choices=("pc", "microvm"),
                            help="QEMU machine (pc; microvm with --kernel)")
        parser.add_argument("--kernel", help="kernel ELF booted directly (with microvm)")
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.bench import BenchOptions, bench_boot, until_pattern

        args = parsed_args
        options = BenchOptions(image=args.image, runs=args.runs,
                               until=until_pattern(args.until), timeout=args.timeout,
                               execute=args.execute, memory=args.memory,
                               machine=args.machine, kernel=args.kernel)
        figures = bench_boot(app_config(self), options)
        return ("Runner", "Measure", "p50 (s)", "p90 (s)", "Max (s)", "Runs"), [
            (f.runner, f.measure, round(f.p50, 3), round(f.p90, 3), round(f.max, 3), f.runs)
            for f in figures]
