"""Fleets: many instances declared once in ``capstan-fleet.yaml``.

``up`` reconciles what runs with the file (a second ``up`` changes nothing),
starting services in ``depends_on`` order with a bounded pool; ``down`` removes
what ``up`` made. The instances of a fleet share a private network (on QEMU a
loopback multicast segment: no root, bridge or daemon) and learn their own and
their dependencies' names and addresses from their environment.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from capstan.core.config import Config
from capstan.core.errors import CapstanError, Conflict, InputError, NotFound, UsageError
from capstan.core.fs import atomic_write
from capstan.core.names import is_valid
from capstan.core.yamlfile import load_strict
from capstan.drivers.base import (
    Capability,
    Driver,
    Instance,
    InstanceSpec,
    Volume,
    get_driver,
)

__all__ = ["DEFAULT_FILE", "Fleet", "Member", "Outcome", "Service", "down", "load_fleet",
           "logs", "plan", "ps", "up"]

# Instances launched at once: each launch mostly waits for its QEMU, so a pool as
# large as a typical fleet lets every QEMU initialise before the guests take the CPUs.
JOBS = 16

DEFAULT_FILE = "capstan-fleet.yaml"
MAX_COUNT = 64
_WILDCARD = {"0.0.0.0", "::", ""}
_FLEET_KEYS = {"name", "services", "private_network"}
_SERVICE_KEYS = {"image", "count", "cpus", "memory", "env", "boot", "command", "ports",
                 "volumes", "driver", "networking", "depends_on"}


@dataclass(frozen=True)
class Service:
    """One entry of ``services:``."""

    name: str
    image: str
    count: int = 1
    cpus: int = 1
    memory: str = "256M"
    env: tuple[str, ...] = ()
    boot: tuple[str, ...] = ()
    command: str | None = None
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    driver: str | None = None
    networking: str = "nat"
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fleet:
    """A validated fleet file; ``services`` in start order."""

    name: str
    path: Path
    services: tuple[Service, ...]
    subnet: ipaddress.IPv4Network | None = None

    def levels(self) -> list[list[Service]]:
        """Services grouped so that each group depends only on earlier groups."""
        level: dict[str, int] = {}
        for svc in self.services:  # already topologically ordered
            level[svc.name] = 1 + max((level[d] for d in svc.depends_on), default=-1)
        groups: list[list[Service]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for svc in self.services:
            groups[level[svc.name]].append(svc)
        return groups


@dataclass(frozen=True)
class Member:
    """One instance the file asks for."""

    name: str
    service: Service
    index: int
    address: str | None
    spec: InstanceSpec
    digest: str


@dataclass(frozen=True)
class Outcome:
    """What happened (or, with ``--dry-run``, would happen) to one instance."""

    instance: str
    service: str
    action: str  # create, recreate, start, keep, remove
    result: str  # ok, failed, skipped, rolled back, planned
    detail: str = ""
    exit_code: int = 0


# -- the file -----------------------------------------------------------------


def load_fleet(path: Path) -> Fleet:
    """Read and validate a fleet file; every mistake is one InputError line."""
    data = load_strict(path)

    def bad(where: str, message: str) -> InputError:
        return InputError(f"{path}: {where}: {message}")

    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with 'services'")
    _only(data, _FLEET_KEYS, "top level", bad)
    name = data.get("name", _slug(path.absolute().parent.name))
    if not is_valid(name, "fleet"):
        raise bad("name", f"'{name}' is not a valid fleet name (letters, digits, '.', '_', "
                  "'-', at most 40)")
    raw_services = data.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        raise bad("services", "expected a non-empty mapping of service name to settings")
    services = {str(key): _service(str(key), value, bad) for key, value in raw_services.items()}
    for svc in services.values():
        for dep in svc.depends_on:
            if dep not in services:
                raise bad(f"services.{svc.name}.depends_on", f"unknown service '{dep}'")
    _check_ports(services.values(), bad)
    subnet = _subnet(data.get("private_network", True), bad)
    ordered = _start_order(services, bad)
    total = sum(s.count for s in ordered)
    if subnet is not None and total > subnet.num_addresses - 3:
        raise bad("private_network", f"{total} instances do not fit {subnet}")
    return Fleet(name, path.absolute(), tuple(ordered), subnet)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.")[:40] or "fleet"


def _only(data: Mapping[str, Any], allowed: set[str], where: str,
          bad: Callable[[str, str], InputError]) -> None:
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise bad(where, f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _service(name: str, value: Any, bad: Callable[[str, str], InputError]) -> Service:
    where = f"services.{name}"
    if not is_valid(name, "service"):
        raise bad(where, "invalid service name (letters, digits, '.', '_', '-')")
    if not isinstance(value, dict):
        raise bad(where, "expected a mapping of settings")
    _only(value, _SERVICE_KEYS, where, bad)
    if not isinstance(value.get("image"), str) or not value["image"]:
        raise bad(f"{where}.image", "required: an image name or file")

    def integer(key: str, default: int, low: int, high: int) -> int:
        got = value.get(key, default)
        if isinstance(got, bool) or not isinstance(got, int) or not low <= got <= high:
            raise bad(f"{where}.{key}", f"must be an integer from {low} to {high}, not {got!r}")
        return got

    def strings(key: str) -> tuple[str, ...]:
        got = value.get(key, [])
        got = [got] if isinstance(got, str | int) and not isinstance(got, bool) else got
        if not isinstance(got, list) or not all(isinstance(g, str | int) for g in got):
            raise bad(f"{where}.{key}", "expected a string or a list of strings")
        return tuple(str(g) for g in got)

    env = value.get("env", {})
    if isinstance(env, dict):
        env_items = tuple(f"{k}={'' if v is None else v}" for k, v in env.items())
    else:
        env_items = strings("env")
    for key in ("command", "driver", "networking"):
        if key in value and not isinstance(value[key], str):
            raise bad(f"{where}.{key}", "expected a string")
    for text in strings("volumes"):
        try:
            Volume.parse(text)
        except UsageError as err:
            raise bad(f"{where}.volumes", str(err)) from err
    memory = value.get("memory", "256M")
    if isinstance(memory, bool) or not isinstance(memory, str | int):
        raise bad(f"{where}.memory", "expected a size such as 512M")
    return Service(
        name=name, image=value["image"], count=integer("count", 1, 0, MAX_COUNT),
        cpus=integer("cpus", 1, 1, 64), memory=str(memory), env=env_items,
        boot=strings("boot"), command=value.get("command"), ports=strings("ports"),
        volumes=strings("volumes"), driver=value.get("driver"),
        networking=value.get("networking", "nat"), depends_on=strings("depends_on"),
    )


def _check_ports(services: Iterable[Service], bad: Callable[[str, str], InputError]) -> None:
    """Every port rule parses, and no fixed host port is used twice (each instance of a
    service binds its ports; a wildcard address clashes with every address)."""
    from capstan.drivers.base import PortForward

    taken: list[tuple[PortForward, str]] = []
    for svc in services:
        for text in svc.ports:
            try:
                rule = PortForward.parse(text)
            except UsageError as err:
                raise bad(f"services.{svc.name}.ports", str(err)) from err
            if rule.host_port == 0 or svc.count == 0:
                continue
            if svc.count > 1:
                raise bad(f"services.{svc.name}.ports", f"host port {rule.host_port} would be "
                          f"bound by each of its {svc.count} instances (use 0 for a free port)")
            for other, owner in taken:
                if (other.host_port, other.protocol) == (rule.host_port, rule.protocol) and (
                        _WILDCARD & {other.host_addr, rule.host_addr}
                        or other.host_addr == rule.host_addr):
                    raise bad(f"services.{svc.name}.ports", f"host port {rule.host_port}/"
                              f"{rule.protocol} is also used by {owner}")
            taken.append((rule, svc.name))


def _subnet(value: Any, bad: Callable[[str, str], InputError]) -> ipaddress.IPv4Network | None:
    if value is False:
        return None
    if value is True:
        return ipaddress.IPv4Network("10.77.0.0/24")
    try:
        net = ipaddress.IPv4Network(str(value))
    except ValueError as err:
        raise bad("private_network", f"expected true, false or a subnet: {err}") from err
    if net.prefixlen > 29:
        raise bad("private_network", f"{net} is too small")
    return net


def _start_order(services: Mapping[str, Service],
                 bad: Callable[[str, str], InputError]) -> list[Service]:
    """Services with dependencies first (file order among equals); cycles refused."""
    done: dict[str, Service] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in path:
            cycle = [*path[path.index(name):], name]
            raise bad("depends_on", f"dependency cycle {' -> '.join(cycle)}")
        path.append(name)
        for dep in services[name].depends_on:
            visit(dep)
        path.pop()
        done[name] = services[name]

    for name in services:
        visit(name)
    return list(done.values())


# -- the plan -----------------------------------------------------------------


def plan(config: Config, fleet: Fleet) -> list[Member]:
    """Every instance the file asks for, with its spec (validated, nothing started)."""
    from capstan.image import cmdline as osv_cmdline
    from capstan.services.disks import image_facts
    from capstan.services.instances import make_spec

    hosts = iter(fleet.subnet.hosts()) if fleet.subnet else None
    if hosts is not None:
        next(hosts)  # .1 is left for a gateway
    addresses: dict[str, list[tuple[str, str]]] = {}
    members: list[Member] = []
    for svc in fleet.services:
        addresses[svc.name] = []
        for index in range(1, svc.count + 1):
            name = f"{fleet.name}-{svc.name}-{index}"
            address = str(next(hosts)) if hosts is not None else None
            if address:
                addresses[svc.name].append((name, address))
            env = [f"FLEET={fleet.name}", f"FLEET_SERVICE={svc.name}",
                   f"FLEET_INSTANCE={name}", f"FLEET_INDEX={index}"]
            options: list[str] = []
            if address and fleet.subnet is not None:
                peers = [f"{n}={a}" for dep in svc.depends_on for n, a in addresses[dep]]
                env += [f"FLEET_ADDR={address}", f"FLEET_HOSTS={','.join(peers)}"]
                nic = "eth1" if svc.networking == "nat" else "eth0"
                options.append(f"--ip={nic},{address},{fleet.subnet.netmask}")
            try:
                spec = make_spec(
                    config, _image_ref(fleet, svc.image), name, memory=svc.memory,
                    cpus=svc.cpus, networking=svc.networking, forwards=svc.ports,
                    volumes=svc.volumes, execute=svc.command, boots=svc.boot,
                    envs=[*env, *svc.env], options=options,
                    private_network=f"{fleet.name}@{fleet.path}" if address else None,
                    private_mac=_mac(name) if address else None)
                if spec.cmdline is not None:
                    osv_cmdline.validate(spec.cmdline)
            except CapstanError as err:
                wrapped = InputError(f"{fleet.path}: services.{svc.name}: {err}")
                if not isinstance(err, UsageError):  # a bad value in the file stays 65
                    wrapped.exit_code = err.exit_code
                raise wrapped from err
            digest = hashlib.sha256(
                f"{spec!r}\0{image_facts(config.root, spec.image).sha256}".encode()).hexdigest()
            members.append(Member(name, svc, index, address, spec, digest))
    return members


def _image_ref(fleet: Fleet, image: str) -> str:
    """Image paths in the file are relative to the file."""
    candidate = fleet.path.parent / image
    return str(candidate) if "/" in image or candidate.is_file() else image


def _mac(name: str) -> str:
    h = hashlib.sha256(name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


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
            self._made[key] = get_driver(key, self.config)
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
        actions: dict[str, str] = {}
        for m in members:
            inst = _current(drivers(m.service.driver), m.name)
            recorded = record.instances.get(m.name)
            if inst is not None and recorded is None:
                raise Conflict(f"instance {m.name} exists but is not part of fleet "
                               f"{fleet.name}: delete it or rename the fleet")
            if inst is None:
                actions[m.name] = "create"
            elif recorded is None or recorded["digest"] != m.digest:
                actions[m.name] = "recreate"
            else:
                actions[m.name] = "keep" if inst.state.live else "start"
        wanted = {m.name for m in members}
        removals = [n for n in record.instances if n not in wanted]
        if dry_run:
            return ([Outcome(n, record.instances[n]["service"], "remove", "planned")
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
            actions: Mapping[str, str], jobs: int, keep_going: bool,
            timeout: float) -> list[Outcome]:
    from capstan.services.instances import create_instance

    results: dict[str, Outcome] = {}
    failed_services: set[str] = set()
    by_service: dict[str, list[Member]] = {}
    for m in members:
        by_service.setdefault(m.service.name, []).append(m)

    def one(m: Member) -> Outcome:
        action = actions[m.name]
        driver = drivers(m.service.driver)
        try:
            if action in ("create", "recreate"):
                if action == "recreate":
                    _delete(driver, m.name, timeout)
                    record.instances.pop(m.name, None)
                create_instance(driver, m.spec)
            if action != "keep":
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
               actions: Mapping[str, str], results: dict[str, Outcome], jobs: int,
               timeout: float) -> None:
    """Delete what this ``up`` created; what was already there stays as it was."""
    made = [m for m in members if actions[m.name] in ("create", "recreate")
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
            return Outcome(name, entry["service"], "remove", "failed", str(err), err.exit_code)
        record.instances.pop(name, None)
        return Outcome(name, entry["service"], "remove", "ok")

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


def logs(config: Config, fleet: Fleet) -> Iterator[tuple[str, Path, Callable[[], bool]]]:
    """(instance, console log, is-running) for each instance ``up`` made."""
    drivers = _Drivers(config)
    for name, entry in _load(config, fleet).instances.items():
        driver = drivers(entry.get("driver"))

        def running(driver: Driver = driver, name: str = name) -> bool:
            inst = _current(driver, name)
            return inst is not None and inst.state.live

        yield name, driver.log_path(name), running
