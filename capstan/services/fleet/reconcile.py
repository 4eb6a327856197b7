"""Fleets: many instances declared once in ``capstan-fleet.yaml``, on one or many hosts.

``up`` reconciles what runs with the file (a second ``up`` changes nothing),
starting services in ``depends_on`` order across hosts, each host's launches in
parallel with a bounded pool; a failure rolls back what this ``up`` made on every
host (unless ``keep_going``). ``down`` removes what ``up`` made. The instances of a
fleet on one host share a private network (on QEMU a loopback multicast segment: no
root, bridge or daemon) and learn their own and their dependencies' names and
addresses from their environment; a dependency on another host is given as that
host's address and the instance's forwarded port, or the address its driver reports
(an instance on a libvirt network). The record keeps what each dependent was given:
when a dependency is reached elsewhere now, ``up`` re-creates the dependent. A host that
cannot be reached is reported once and does not hide the others.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from capstan.core.config import Config
from capstan.core.errors import CapstanError, Conflict, InputError, NotFound
from capstan.drivers.base import Driver, Instance
from capstan.services.fleet import reach, state
from capstan.services.fleet.hosts import LOCAL, HostSet, HostUnreachable, place
from capstan.services.fleet.parse import Fleet
from capstan.services.fleet.plan import Action, Member, build_spec, decide, plan
from capstan.services.instances import create_instance, memory_mib

__all__ = ["JOBS", "Outcome", "UpOptions", "down", "up"]

# Instances launched at once: each launch mostly waits for its QEMU, so a pool as
# large as a typical fleet lets every QEMU initialise before the guests take the CPUs.
JOBS = 16


@dataclass(frozen=True)
class Outcome:
    """What happened (or, with ``--dry-run``, would happen) to one instance."""

    instance: str
    service: str
    action: Action
    result: str  # ok, failed, skipped, rolled back, planned, unreachable
    detail: str = ""
    exit_code: int = 0
    host: str = LOCAL


@dataclass
class _Run:
    """One ``up`` or ``down``: the hosts, the record it updates, and its limits."""

    config: Config
    fleet: Fleet
    hosts: HostSet
    record: state.Record
    jobs: int = JOBS
    timeout: float = 30
    lock: threading.Lock = field(default_factory=threading.Lock)
    notes: dict[str, str] = field(default_factory=dict)  # why up re-creates an instance

    def remember(self, m: Member, driver: Driver, reach: str = "") -> None:
        """Record that *m* runs on its host, given its remote dependencies at *reach*."""
        with self.lock:
            self.record.instances[m.name] = {"service": m.service.name, "digest": m.digest,
                                             "driver": driver.name, "host": m.host,
                                             **({"reach": reach} if m.remote else {})}

    def forget(self, name: str) -> None:
        """Record that *name* is gone."""
        with self.lock:
            self.record.instances.pop(name, None)


def hosts_of(config: Config, fleet: Fleet) -> HostSet:
    return HostSet(config, fleet.hosts, str(fleet.path))


def current(driver: Driver, name: str) -> Instance | None:
    try:
        return driver.get(name)
    except NotFound:
        return None


def placement(hosts: HostSet, fleet: Fleet, record: state.Record, *,
               probe: bool) -> dict[str, str]:
    """Instance name -> host for services spread over several hosts: where the record
    has it (while that host is still listed), else placed (by free memory with *probe*)."""
    placement: dict[str, str] = {}
    for svc in fleet.services:
        if len(svc.hosts) <= 1:  # one host or none: nothing to choose
            continue
        names = {i: f"{fleet.name}-{svc.name}-{i}" for i in range(1, svc.count + 1)}
        kept = {i: record.host(n) for i, n in names.items() if n in record.instances}
        free = None
        if probe and len(kept) < svc.count:
            free = {h: hosts.free_memory(h) for h in svc.hosts}
        try:
            need = memory_mib(svc.memory)
        except CapstanError:
            need = 0  # plan reports the bad size
        placed = place(names, svc.hosts, free=free, memory_mib=need, kept=kept)
        placement.update({names[i]: h for i, h in placed.items()})
    return placement


# -- up -----------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    """How ``up`` works: *jobs* instances at a time, on after a failure (*keep_going*;
    else what this ``up`` made is rolled back), only planning (*dry_run*), and the
    *timeout* in seconds of a graceful stop."""

    jobs: int = JOBS
    keep_going: bool = False
    dry_run: bool = False
    timeout: float = 30


def up(config: Config, fleet: Fleet, options: UpOptions = UpOptions()) -> list[Outcome]:
    """Make the running instances match *fleet*; see the module docstring."""
    hosts = hosts_of(config, fleet)
    _check_private(fleet, hosts)
    with state.lock(config, fleet):
        record = state.load(config, fleet)
        members = plan(config, fleet, hosts=hosts,
                       placement=placement(hosts, fleet, record, probe=True))
        actions, removals, notes = _decide_all(hosts, fleet, record, members)
        if options.dry_run:
            return ([Outcome(n, record.instances[n]["service"], Action.REMOVE, "planned",
                             host=record.host(n)) for n in removals]
                    + [Outcome(m.name, m.service.name, actions[m.name], "planned",
                               notes.get(m.name, ""), host=m.host) for m in members])
        run = _Run(config, fleet, hosts, record, options.jobs, options.timeout, notes=notes)
        outcomes = _remove(run, removals)
        outcomes += _launch(run, members, actions, options.keep_going)
        state.save(config, fleet, record)
    return outcomes


def _check_private(fleet: Fleet, hosts: HostSet) -> None:
    """The local host's driver can join the private network the file asks for (a
    named host's instances join one only where its driver can)."""
    if fleet.subnet is None or LOCAL in fleet.hosts:
        return
    for svc in fleet.services:
        if svc.count and LOCAL in (svc.hosts or (LOCAL,)) and \
                not hosts.private(LOCAL, hosts.driver(LOCAL, svc.driver).name):
            raise InputError(f"{fleet.path}: services.{svc.name}: driver "
                             f"'{hosts.driver_name(LOCAL, svc.driver)}' has no private "
                             "network; set private_network: false")


def _decide_all(hosts: HostSet, fleet: Fleet, record: state.Record, members: Sequence[Member]
                ) -> tuple[dict[str, Action], list[str], dict[str, str]]:
    """Each member's action, the recorded instances to remove first (those no longer in
    the file, and those moved to another host), and notes on the actions."""
    wanted = {m.name for m in members}
    removals = [n for n in record.instances if n not in wanted]
    actions: dict[str, Action] = {}
    notes: dict[str, str] = {}
    by_name = {m.name: m for m in members}
    for m in members:
        recorded = record.instances.get(m.name)
        if recorded is not None and record.host(m.name) != m.host:
            removals.append(m.name)  # moved: deleted from its old host, made on the new
            recorded = None
        inst = hosts.instances(m.host, m.service.driver).get(m.name)
        if inst is not None and recorded is None:
            raise Conflict(f"instance {m.name} exists on host {m.host} but is not part of "
                           f"fleet {fleet.name}: delete it or rename the fleet")
        actions[m.name] = decide(inst, recorded["digest"] if recorded else None, m)
        if recorded is not None and m.remote and actions[m.name] in _KEPT:
            actions[m.name], notes[m.name] = _recheck(hosts, m, by_name, actions,
                                                      recorded.get("reach"))
    return actions, removals, notes


_KEPT = (Action.KEEP, Action.START)
_MOVED = "a dependency is reached elsewhere now"


def _recheck(hosts: HostSet, m: Member, by_name: Mapping[str, Member],
             actions: Mapping[str, Action], given: str | None) -> tuple[Action, str]:
    """RECREATE for *m* (kept or started otherwise) when its remote dependencies are
    reached elsewhere than it was *given*; one that ``up`` makes first is checked when
    it runs."""
    moving = [n for n in m.remote if actions[n] not in _KEPT]
    if moving:
        return actions[m.name], f"re-created if {moving[0]} is reached elsewhere"
    try:
        now = reach.given(m, reach.reachable(hosts, [by_name[n] for n in m.remote]))
    except CapstanError:
        return actions[m.name], ""  # its launch reports it
    return (Action.RECREATE, _MOVED) if now != given else (actions[m.name], "")


def _delete(driver: Driver, name: str, timeout: float) -> None:
    """Stop *name* (graceful for *timeout* seconds) and delete it."""
    driver.stop(name, timeout)
    driver.delete(name)


def _launch(run: _Run, members: Sequence[Member], actions: Mapping[str, Action],
            keep_going: bool) -> list[Outcome]:
    """Carry out *actions* level by level; each host runs up to ``jobs`` at once."""
    results: dict[str, Outcome] = {}
    failed: set[str] = set()
    by_name = {m.name: m for m in members}
    gates = {h: threading.Semaphore(run.jobs) for h in {m.host for m in members}}

    def one(m: Member) -> Outcome:
        with gates[m.host]:
            return _one(run, m, actions[m.name], by_name)

    with ThreadPoolExecutor(max_workers=run.jobs * max(1, len(gates))) as pool:
        for level in run.fleet.levels():
            todo: list[Member] = []
            for m in (m for svc in level for m in members if m.service is svc):
                blocked = [d for d in m.service.depends_on if d in failed]
                if blocked or (failed and not keep_going):
                    why = (f"dependency {blocked[0]} failed" if blocked
                           else "an earlier instance failed")
                    results[m.name] = Outcome(m.name, m.service.name, actions[m.name],
                                              "skipped", why, host=m.host)
                    failed.add(m.service.name)
                else:
                    todo.append(m)
            for outcome in pool.map(one, todo):
                results[outcome.instance] = outcome
                if outcome.result == "failed":
                    failed.add(outcome.service)
    if failed and not keep_going:
        _roll_back(run, members, results)
    return [results[m.name] for m in members]


def _one(run: _Run, m: Member, action: Action, by_name: Mapping[str, Member]) -> Outcome:
    """Carry out *action* on *m* on its host."""
    detail = run.notes.get(m.name, "") if action is Action.RECREATE else ""
    try:
        driver = run.hosts.driver(m.host, m.service.driver)
        found = reach.reachable(run.hosts, [by_name[n] for n in m.remote])
        given = reach.given(m, found)
        if m.remote and action in _KEPT and \
                given != run.record.instances.get(m.name, {}).get("reach"):
            action, detail = Action.RECREATE, _MOVED
        if action in (Action.CREATE, Action.RECREATE):
            if action is Action.RECREATE:
                _delete(driver, m.name, run.timeout)
                run.forget(m.name)
            create_instance(driver, build_spec(run.config, run.fleet, m, found)
                            if m.remote else m.spec)
        if action is not Action.KEEP:
            driver.start(m.name)
        run.remember(m, driver, given)
        return Outcome(m.name, m.service.name, action, "ok", detail, host=m.host)
    except CapstanError as err:
        return Outcome(m.name, m.service.name, action, "failed",
                       run.hosts.scrub(m.host, str(err)), err.exit_code, m.host)


def _roll_back(run: _Run, members: Sequence[Member], results: dict[str, Outcome]) -> None:
    """Delete what this ``up`` created, on every host; what was there stays as it was."""
    made = [m for m in members if results[m.name].action in (Action.CREATE, Action.RECREATE)
            and results[m.name].result in ("ok", "failed")]

    def undo(m: Member) -> None:
        try:
            _delete(run.hosts.driver(m.host, m.service.driver), m.name, run.timeout)
        except NotFound:
            pass
        except CapstanError as err:
            detail = run.hosts.scrub(m.host, f"{results[m.name].detail}; rollback failed: {err}")
            results[m.name] = Outcome(m.name, m.service.name, results[m.name].action, "failed",
                                      detail, 69, m.host)
            return
        run.forget(m.name)
        if results[m.name].result == "ok":
            results[m.name] = Outcome(m.name, m.service.name, results[m.name].action,
                                      "rolled back",
                                      "another instance failed", host=m.host)

    with ThreadPoolExecutor(max_workers=run.jobs) as pool:
        list(pool.map(undo, made))


# -- down ---------------------------------------------------------------------


def _remove(run: _Run, names: Sequence[str]) -> list[Outcome]:
    """Stop and delete the recorded instances *names*, in parallel."""
    def one(name: str) -> Outcome:
        entry, host = run.record.instances[name], run.record.host(name)
        try:
            driver = run.hosts.driver(host, entry.get("driver"))
            if current(driver, name) is not None:
                _delete(driver, name, run.timeout)
        except CapstanError as err:
            return Outcome(name, entry["service"], Action.REMOVE, "failed",
                           run.hosts.scrub(host, str(err)), err.exit_code, host)
        run.forget(name)
        return Outcome(name, entry["service"], Action.REMOVE, "ok", host=host)

    with ThreadPoolExecutor(max_workers=run.jobs) as pool:
        return list(pool.map(one, names))


def _reachable_names(run: _Run, names: Iterable[str]) -> tuple[list[Outcome], list[str]]:
    """Ask each host of *names* once: an Outcome for each name on a host that does not
    answer, and the names on the hosts that do."""
    down_hosts: dict[str, HostUnreachable] = {}
    outcomes: list[Outcome] = []
    rest: list[str] = []
    for name in names:
        entry, host = run.record.instances[name], run.record.host(name)
        if host not in down_hosts:
            try:
                run.hosts.instances(host, entry.get("driver"))
            except HostUnreachable as err:
                down_hosts[host] = err
        problem = down_hosts.get(host)
        if problem is None:
            rest.append(name)
        else:
            outcomes.append(Outcome(name, entry["service"], Action.REMOVE, "unreachable",
                                    str(problem), problem.exit_code, host))
    return outcomes, rest


def down(config: Config, fleet: Fleet, *, timeout: float = 30, jobs: int = JOBS) -> list[Outcome]:
    """Stop and delete every instance ``up`` made for *fleet*, dependents first, on
    every host that answers (those on a host that does not stay recorded)."""
    order = {svc.name: i for i, svc in enumerate(fleet.services)}
    lock = state.lock(config, fleet)
    with lock:
        run = _Run(config, fleet, hosts_of(config, fleet), state.load(config, fleet), jobs,
                   timeout)
        outcomes, names = _reachable_names(run, list(run.record.instances))
        by_level: dict[int, list[str]] = {}
        for name in names:
            service = run.record.instances[name]["service"]
            by_level.setdefault(order.get(service, len(order)), []).append(name)
        for level in sorted(by_level, reverse=True):
            outcomes += _remove(run, sorted(by_level[level]))
        state.save(config, fleet, run.record)
        if not run.record.instances:  # down leaves nothing behind, its lock included
            Path(lock.lock_file).unlink(missing_ok=True)
    return outcomes
