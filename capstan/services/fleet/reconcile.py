"""Fleets: many instances declared once in ``capstan-fleet.yaml``.

``up`` reconciles what runs with the file (a second ``up`` changes nothing),
starting services in ``depends_on`` order with a bounded pool; ``down`` removes
what ``up`` made. The instances of a fleet share a private network (on QEMU a
loopback multicast segment: no root, bridge or daemon) and learn their own and
their dependencies' names and addresses from their environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from capstan.core.config import Config
from capstan.core.errors import CapstanError, Conflict, InputError, NotFound
from capstan.core.fs import atomic_write
from capstan.drivers.base import Capability, Driver, Instance
from capstan.services.disks import open_driver
from capstan.services.fleet.parse import Fleet
from capstan.services.fleet.plan import Action, Member, decide, plan
from capstan.services.instances import LogSource, create_instance, follow_logs

__all__ = ["JOBS", "Outcome", "Row", "down", "logs", "ps", "up"]

# Instances launched at once: each launch mostly waits for its QEMU, so a pool as
# large as a typical fleet lets every QEMU initialise before the guests take the CPUs.
JOBS = 16


@dataclass(frozen=True)
class Outcome:
    """What happened (or, with ``--dry-run``, would happen) to one instance."""

    instance: str
    service: str
    action: Action
    result: str  # ok, failed, skipped, rolled back, planned
    detail: str = ""
    exit_code: int = 0


# -- state --------------------------------------------------------------------


@dataclass
class _Record:
    """``<root>/fleets/<name>.json``: what ``up`` made, so that ``down`` finds it."""

    file: str
    instances: dict[str, dict[str, str]] = field(default_factory=dict)


def _state_path(config: Config, fleet: Fleet) -> Path:
    return config.root / "fleets" / f"{fleet.name}.json"


def _lock(config: Config, fleet: Fleet) -> FileLock:
    folder = config.root / "fleets"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{fleet.name}.lock"))


def _load(config: Config, fleet: Fleet) -> _Record:
    path = _state_path(config, fleet)
    try:
        data = json.loads(path.read_text())
        return _Record(data["file"], dict(data["instances"]))
    except FileNotFoundError:
        return _Record(str(fleet.path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"fleet state {path} is damaged: {err}") from err


def _save(config: Config, fleet: Fleet, record: _Record) -> None:
    path = _state_path(config, fleet)
    if record.instances:
        atomic_write(path, json.dumps({"file": record.file, "instances": record.instances},
                                      indent=2).encode())
    else:
        path.unlink(missing_ok=True)


class _Drivers:
    """One driver object per name, made on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._made: dict[str, Driver] = {}

    def __call__(self, name: str | None) -> Driver:
        key = name or self.config.hypervisor
        if key not in self._made:
            self._made[key] = open_driver(key, self.config)
        return self._made[key]


def _current(driver: Driver, name: str) -> Instance | None:
    try:
        return driver.get(name)
    except NotFound:
        return None


# -- operations ---------------------------------------------------------------


def up(config: Config, fleet: Fleet, *, jobs: int = JOBS, keep_going: bool = False,
       dry_run: bool = False, timeout: float = 30) -> list[Outcome]:
    """Make the running instances match *fleet*; see the module docstring."""
    members = plan(config, fleet)
    drivers = _Drivers(config)
    for svc in fleet.services:
        if fleet.subnet is not None and svc.count and \
                Capability.PRIVATE_NETWORK not in drivers(svc.driver).capabilities:
            raise InputError(f"{fleet.path}: services.{svc.name}: driver "
                             f"'{drivers(svc.driver).name}' has no private network; set "
                             "private_network: false")
    with _lock(config, fleet):
        record = _load(config, fleet)
        actions: dict[str, Action] = {}
        for m in members:
            inst = _current(drivers(m.service.driver), m.name)
            recorded = record.instances.get(m.name)
            if inst is not None and recorded is None:
                raise Conflict(f"instance {m.name} exists but is not part of fleet "
                               f"{fleet.name}: delete it or rename the fleet")
            actions[m.name] = decide(inst, recorded["digest"] if recorded else None, m)
        wanted = {m.name for m in members}
        removals = [n for n in record.instances if n not in wanted]
        if dry_run:
            return ([Outcome(n, record.instances[n]["service"], Action.REMOVE, "planned")
                     for n in removals]
                    + [Outcome(m.name, m.service.name, actions[m.name], "planned")
                       for m in members])
        outcomes = _remove(drivers, record, removals, timeout, jobs)
        outcomes += _launch(drivers, record, fleet, members, actions, jobs, keep_going,
                            timeout)
        _save(config, fleet, record)
    return outcomes


def _delete(driver: Driver, name: str, timeout: float) -> None:
    """Stop *name* (graceful for *timeout* seconds) and delete it."""
    driver.stop(name, timeout)
    driver.delete(name)


def _launch(drivers: _Drivers, record: _Record, fleet: Fleet, members: Sequence[Member],
            actions: Mapping[str, Action], jobs: int, keep_going: bool,
            timeout: float) -> list[Outcome]:
    results: dict[str, Outcome] = {}
    failed_services: set[str] = set()
    by_service: dict[str, list[Member]] = {}
    for m in members:
        by_service.setdefault(m.service.name, []).append(m)

    def one(m: Member) -> Outcome:
        action = actions[m.name]
        driver = drivers(m.service.driver)
        try:
            if action in (Action.CREATE, Action.RECREATE):
                if action is Action.RECREATE:
                    _delete(driver, m.name, timeout)
                    record.instances.pop(m.name, None)
                create_instance(driver, m.spec)
            if action is not Action.KEEP:
                driver.start(m.name)
            record.instances[m.name] = {"service": m.service.name, "digest": m.digest,
                                        "driver": driver.name}
            return Outcome(m.name, m.service.name, action, "ok")
        except CapstanError as err:
            return Outcome(m.name, m.service.name, action, "failed", str(err), err.exit_code)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for level in fleet.levels():
            todo: list[Member] = []
            for svc in level:
                blocked = [d for d in svc.depends_on if d in failed_services]
                for m in by_service.get(svc.name, []):
                    if blocked or (failed_services and not keep_going):
                        why = (f"dependency {blocked[0]} failed" if blocked
                               else "an earlier instance failed")
                        results[m.name] = Outcome(m.name, svc.name, actions[m.name],
                                                  "skipped", why)
                        failed_services.add(svc.name)
                    else:
                        todo.append(m)
            for outcome in pool.map(one, todo):
                results[outcome.instance] = outcome
                if outcome.result == "failed":
                    failed_services.add(outcome.service)
    if failed_services and not keep_going:
        _roll_back(drivers, record, members, actions, results, jobs, timeout)
    return [results[m.name] for m in members]


def _roll_back(drivers: _Drivers, record: _Record, members: Sequence[Member],
               actions: Mapping[str, Action], results: dict[str, Outcome], jobs: int,
               timeout: float) -> None:
    """Delete what this ``up`` created; what was already there stays as it was."""
    made = [m for m in members if actions[m.name] in (Action.CREATE, Action.RECREATE)
            and results[m.name].result in ("ok", "failed")]

    def undo(m: Member) -> None:
        try:
            _delete(drivers(m.service.driver), m.name, timeout)
        except NotFound:
            pass
        except CapstanError as err:
            results[m.name] = Outcome(m.name, m.service.name, actions[m.name], "failed",
                                      f"{results[m.name].detail}; rollback failed: {err}", 69)
            return
        record.instances.pop(m.name, None)
        if results[m.name].result == "ok":
            results[m.name] = Outcome(m.name, m.service.name, actions[m.name], "rolled back",
                                      "another instance failed")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(undo, made))


def _remove(drivers: _Drivers, record: _Record, names: Sequence[str], timeout: float,
            jobs: int) -> list[Outcome]:
    def one(name: str) -> Outcome:
        entry = record.instances[name]
        driver = drivers(entry.get("driver"))
        try:
            if _current(driver, name) is not None:
                _delete(driver, name, timeout)
        except CapstanError as err:
            return Outcome(name, entry["service"], Action.REMOVE, "failed", str(err), err.exit_code)
        record.instances.pop(name, None)
        return Outcome(name, entry["service"], Action.REMOVE, "ok")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, names))


def down(config: Config, fleet: Fleet, *, timeout: float = 30, jobs: int = JOBS) -> list[Outcome]:
    """Stop and delete every instance ``up`` made for *fleet*, dependents first."""
    drivers = _Drivers(config)
    order = {svc.name: i for i, svc in enumerate(fleet.services)}
    lock = _lock(config, fleet)
    with lock:
        record = _load(config, fleet)
        outcomes: list[Outcome] = []
        by_level: dict[int, list[str]] = {}
        for name, entry in record.instances.items():
            by_level.setdefault(order.get(entry["service"], len(order)), []).append(name)
        for level in sorted(by_level, reverse=True):
            outcomes += _remove(drivers, record, sorted(by_level[level]), timeout, jobs)
        _save(config, fleet, record)
        if not record.instances:  # down leaves nothing behind, its lock included
            Path(lock.lock_file).unlink(missing_ok=True)
    return outcomes


@dataclass(frozen=True)
class Row:
    """One line of ``ps``."""

    instance: str
    service: str
    state: str
    address: str
    ports: str
    pid: int | None
    driver: str


def ps(config: Config, fleet: Fleet) -> list[Row]:
    """The fleet's instances as they are now (absent ones included)."""
    drivers = _Drivers(config)
    record = _load(config, fleet)
    rows = []
    for m in plan(config, fleet):
        driver = drivers(m.service.driver)
        inst = _current(driver, m.name) if m.name in record.instances else None
        rows.append(Row(m.name, m.service.name, inst.state.value if inst else "absent",
                        m.address or "", " ".join(inst.ports) if inst else "",
                        inst.pid if inst else None, driver.name))
    return rows


def logs(config: Config, fleet: Fleet, out: BinaryIO, *, follow: bool = False) -> None:
    """The console logs of the instances ``up`` made, each line prefixed with its
    instance, to *out* (with *follow*, until every one has stopped)."""
    drivers = _Drivers(config)
    sources = []
    for name, entry in _load(config, fleet).instances.items():
        driver = drivers(entry.get("driver"))

        def running(driver: Driver = driver, name: str = name) -> bool:
            inst = _current(driver, name)
            return inst is not None and inst.state.live

        sources.append(LogSource(name, driver.log_path(name), running))
    follow_logs(sources, out, follow=follow, prefix=True, interval=0.2)
