"""``capstan bench boot``: how fast an image boots through capstan, beside bare QEMU.

One QEMU instance is created; each round boots it twice, once with ``capstan``'s
own start (:meth:`Driver.start`: overlay checks, QMP handshake) and once as bare
QEMU with the very same argv, and times from the launch to the first console
byte and to the marker (``--until``; without one, to the guest's power-off).
With ``--bootchart`` in the command line OSv prints its own boot-time report,
whose ``Total time`` is summarised too.
"""

from __future__ import annotations

import math
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capstan.core import proc
from capstan.core.config import Config
from capstan.core.errors import GuestFailure, GuestTimeout, UsageError
from capstan.drivers.base import Driver
from capstan.services.instances import RunRequest, create_instance, driver_for, make_spec

__all__ = ["BenchOptions", "Figure", "bench_boot", "percentile", "until_pattern"]

POLL = 0.005  # seconds between two reads of the console
MAX_RUNS = 1000
MAX_PATTERN = 1000
_BOOTCHART = re.compile(r"Total time: (\d+(?:\.\d+)?)ms")
P50, P90 = 50, 90


@dataclass(frozen=True)
class BenchOptions:
    """What to boot and how often."""

    image: str
    runs: int = 20
    until: re.Pattern[str] | None = None
    timeout: float = 60.0  # per boot
    execute: str | None = None
    memory: str = "256M"
    machine: str | None = None
    kernel: str | None = None


@dataclass(frozen=True)
class Figure:
    """One row of the table: a runner's times to one point of the boot, in seconds."""

    runner: str  # capstan, qemu
    measure: str  # first byte, marker, power-off, osv bootchart
    p50: float
    p90: float
    max: float
    runs: int


@dataclass(frozen=True)
class _Boot:
    """One boot's times (seconds from the launch) and its console."""

    first: float
    end: float
    console: str


def until_pattern(text: str | None) -> re.Pattern[str] | None:
    """``--until``'s regular expression (UsageError when it does not compile)."""
    if text is None:
        return None
    if len(text) > MAX_PATTERN:
        raise UsageError(f"invalid --until: longer than {MAX_PATTERN} characters")
    try:
        return re.compile(text, re.MULTILINE)
    except re.error as err:
        raise UsageError(f"invalid --until {text!r}: {err}") from err


def percentile(values: Sequence[float], p: int) -> float:
    """The nearest-rank *p*-th percentile of *values*."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def bench_boot(config: Config, options: BenchOptions,
               progress: Callable[[int], None] | None = None) -> list[Figure]:
    """Boot *options.image* *options.runs* times each way; the figures."""
    if not 1 <= options.runs <= MAX_RUNS:
        raise UsageError(f"invalid -n {options.runs}: 1 to {MAX_RUNS} boots")
    driver = driver_for(config, "qemu")
    name = f"capstan-bench-{secrets.token_hex(4)}"
    spec = make_spec(config, options.image, name, RunRequest(
        memory=options.memory, cpus=1, networking="none", execute=options.execute,
        machine=options.machine, kernel=options.kernel))
    create_instance(driver, spec)
    boots: dict[str, list[_Boot]] = {"capstan": [], "qemu": []}
    try:
        argv = list(driver.get(name).extra["argv"])
        for done in range(options.runs):
            boots["capstan"].append(_through_capstan(driver, name, options))
            boots["qemu"].append(_bare(driver.log_path(name), argv, options))
            if progress is not None:
                progress(done + 1)
    finally:
        driver.delete(name)
    return [figure for runner, runs in boots.items() for figure in _figures(runner, runs,
                                                                              options)]


def _figures(runner: str, boots: list[_Boot], options: BenchOptions) -> list[Figure]:
    def row(measure: str, values: list[float]) -> Figure:
        return Figure(runner, measure, p50=percentile(values, P50),
                      p90=percentile(values, P90), max=max(values), runs=len(values))

    rows = [row("first byte", [b.first for b in boots]),
            row("marker" if options.until else "power-off", [b.end for b in boots])]
    chart = [float(m[-1]) / 1000 for b in boots if (m := _BOOTCHART.findall(b.console))]
    if chart:
        rows.append(row("osv bootchart", chart))
    return rows


class _Clock:
    """Times one boot from its launch by reading the console log from *offset*."""

    def __init__(self, log: Path, options: BenchOptions) -> None:
        self.log, self.options = log, options
        self.offset = log.stat().st_size if log.exists() else 0
        self.start = time.monotonic()
        self.first: float | None = None
        self.text = ""

    def tick(self, ended: bool) -> float | None:
        """The time to the marker (or the end) once reached, else None."""
        now = time.monotonic() - self.start
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            self.text = f.read().decode("utf-8", "replace")
        if self.text and self.first is None:
            self.first = now
        until = self.options.until
        if (until is not None and until.search(self.text)) or (until is None and ended):
            return now
        if ended:
            raise GuestFailure(f"the guest ended before /{until.pattern if until else ''}/ "
                               "appeared")
        if now > self.options.timeout:
            raise GuestTimeout(f"the guest did not boot within {self.options.timeout:g} s")
        return None

    def boot(self, end: float) -> _Boot:
        return _Boot(self.first if self.first is not None else end, end, self.text)


def _through_capstan(driver: Driver, name: str, options: BenchOptions) -> _Boot:
    clock = _Clock(driver.log_path(name), options)
    driver.start(name)
    try:
        while (end := clock.tick(ended=not driver.get(name).state.live)) is None:
            time.sleep(POLL)
    finally:
        driver.stop(name, timeout=0)
    return clock.boot(end)


def _bare(log: Path, argv: list[str], options: BenchOptions) -> _Boot:
    clock = _Clock(log, options)
    qemu = proc.spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      outlive=True)
    try:
        while (end := clock.tick(ended=qemu.poll() is not None)) is None:
            time.sleep(POLL)
    finally:
        qemu.kill()
        qemu.wait()
    return clock.boot(end)
