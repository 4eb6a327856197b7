"""What a fleet looks like now: ``ps`` (one row per instance, with its host) and ``logs``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO

from capstan.core.config import Config
from capstan.core.errors import CapstanError
from capstan.drivers.base import Driver, LogReader
from capstan.services.fleet import state
from capstan.services.fleet.hosts import LOCAL, HostSet, HostUnreachable
from capstan.services.fleet.parse import Fleet
from capstan.services.fleet.plan import plan
from capstan.services.fleet.reconcile import current, hosts_of, placement
from capstan.services.instances import LogSource, follow_logs

__all__ = ["Row", "logs", "ps"]


@dataclass(frozen=True)
class Row:
    """One line of ``ps``; *note* says why a host did not answer."""

    instance: str
    service: str
    state: str
    address: str
    ports: str
    pid: int | None
    driver: str
    host: str = LOCAL
    note: str = ""
    exit_code: int = 0


def ps(config: Config, fleet: Fleet) -> list[Row]:
    """The fleet's instances as they are now (absent ones included); each host is
    asked once, and one that does not answer marks only its own rows."""
    hosts = hosts_of(config, fleet)
    record = state.load(config, fleet)
    rows = []
    for m in plan(config, fleet, hosts=hosts,
                  placement=placement(hosts, fleet, record, probe=False)):
        host = record.host(m.name) if m.name in record.instances else m.host
        driver = hosts.driver_name(host, m.service.driver)
        row = Row(m.name, m.service.name, "absent", m.address or "", "", None, driver, host)
        if m.name in record.instances:
            try:
                inst = hosts.instances(host, m.service.driver).get(m.name)
            except HostUnreachable as err:
                rows.append(replace(row, state="unreachable", note=str(err),
                                    exit_code=err.exit_code))
                continue
            if inst is not None:
                row = Row(m.name, m.service.name, inst.state.value, m.address or "",
                          " ".join(inst.ports), inst.pid, driver, host)
        rows.append(row)
    return rows


def logs(config: Config, fleet: Fleet, out: BinaryIO, *,
         follow: bool = False) -> list[CapstanError]:
    """The console logs of the instances ``up`` made, each line prefixed with its
    instance, to *out* (with *follow*, until every one has stopped); returns one error
    for each host whose logs cannot be read (the others' are printed)."""
    hosts = hosts_of(config, fleet)
    record = state.load(config, fleet)
    problems: dict[str, CapstanError] = {}
    sources = []
    for name, entry in record.instances.items():
        host = record.host(name)
        if host in problems:
            continue
        try:
            driver = hosts.driver(host, entry.get("driver"))
            log = driver.open_log(name)
        except CapstanError as err:
            problems[host] = hosts.unreachable(host, err)
            continue

        def running(driver: Driver = driver, name: str = name) -> bool:
            try:
                inst = current(driver, name)
            except CapstanError:
                return False
            return inst is not None and inst.state.live

        sources.append(LogSource(name, _HostLog(log, host, hosts, problems), running))
    follow_logs(sources, out, follow=follow, prefix=True, interval=0.2)
    return list(problems.values())


class _HostLog(LogReader):
    """A log whose failure is its host's problem (its first one is reported) and ends
    only this log, so that one host or instance does not hide the others."""

    def __init__(self, log: LogReader, host: str, hosts: HostSet,
                 problems: dict[str, CapstanError]) -> None:
        self.log, self.host, self.hosts, self.problems = log, host, hosts, problems
        self.failed = False

    def _guarded(self, read: Callable[[], bytes]) -> bytes:
        if self.failed:
            return b""
        try:
            return read()
        except CapstanError as err:
            self.failed = True
            self.problems.setdefault(self.host, self.hosts.unreachable(self.host, err))
            return b""

    def read(self) -> bytes:
        return self._guarded(self.log.read)

    def rest(self) -> bytes:
        return self._guarded(self.log.rest)

    def close(self) -> None:
        with contextlib.suppress(CapstanError):
            self.log.close()
