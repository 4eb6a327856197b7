"""The plan of a fleet: every instance the file asks for, and what ``up`` does to each."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from capstan.core.config import Config
from capstan.core.errors import CapstanError, InputError, UsageError
from capstan.drivers.base import Instance, InstanceSpec
from capstan.services.fleet.hosts import LOCAL, HostSet
from capstan.services.fleet.parse import Fleet, Service

__all__ = ["Action", "Member", "build_spec", "decide", "plan"]


class Action(enum.StrEnum):
    """What ``up`` does to one instance (the value is what ``fleet up`` shows)."""

    CREATE = "create"  # absent: create and start it
    RECREATE = "recreate"  # its spec or image changed: delete, create and start it
    START = "start"  # as asked but not running: start it
    KEEP = "keep"  # as asked and running: leave it
    REMOVE = "remove"  # no longer in the file: stop and delete it


@dataclass(frozen=True)
class Member:
    """One instance the file asks for, and the host it is placed on."""

    name: str
    service: Service
    index: int
    address: str | None
    spec: InstanceSpec
    digest: str
    host: str = LOCAL
    env: tuple[str, ...] = ()  # the FLEET_* variables but FLEET_HOSTS
    peers: tuple[str, ...] = ()  # FLEET_HOSTS entries on this host's private segment
    remote: tuple[str, ...] = ()  # dependencies reached through their host's address


def plan(config: Config, fleet: Fleet, *, placement: Mapping[str, str] | None = None,
         hosts: HostSet | None = None) -> list[Member]:
    """Every instance the file asks for, with its host and spec (validated, nothing
    started); *placement* maps instance names to hosts (others: round-robin)."""
    hosts = hosts or HostSet(config, fleet.hosts, str(fleet.path))
    free = iter(fleet.subnet.hosts()) if fleet.subnet else None
    if free is not None:
        next(free)  # .1 is left for a gateway
    placed: dict[str, Member] = {}
    members: list[Member] = []
    for svc in fleet.services:
        for index in range(1, svc.count + 1):
            name = f"{fleet.name}-{svc.name}-{index}"
            host = (placement or {}).get(name) or _default_host(svc, index)
            joins = free is not None and (host == LOCAL or hosts.private(host, svc.driver))
            address = str(next(free)) if joins and free is not None else None
            deps = [placed[f"{fleet.name}-{d}-{i}"] for d in svc.depends_on
                    for i in range(1, _count(fleet, d) + 1)]
            peers = tuple(f"{d.name}={d.address}" for d in deps
                          if address and d.address and d.host == host)
            remote = tuple(d.name for d in deps if d.host != host)
            env = (f"FLEET={fleet.name}", f"FLEET_SERVICE={svc.name}",
                   f"FLEET_INSTANCE={name}", f"FLEET_INDEX={index}",
                   *((f"FLEET_ADDR={address}",) if address else ()))
            member = Member(name, svc, index, address, InstanceSpec(name, Path()), "", host,
                            env, peers, remote)
            spec = build_spec(config, fleet, member, {n: "remote" for n in remote})
            digest = hashlib.sha256(_digest_text(config, spec, host).encode()).hexdigest()
            member = replace(member, spec=spec, digest=digest)
            placed[name] = member
            members.append(member)
    return members


def _default_host(svc: Service, index: int) -> str:
    return svc.hosts[(index - 1) % len(svc.hosts)] if svc.hosts else LOCAL


def _count(fleet: Fleet, service: str) -> int:
    return next(s.count for s in fleet.services if s.name == service)


def _digest_text(config: Config, spec: InstanceSpec, host: str) -> str:
    from capstan.services.disks import image_facts

    text = f"{spec!r}\0{image_facts(config.root, spec.image).sha256}"
    return text if host == LOCAL else f"{text}\0{host}"


def build_spec(config: Config, fleet: Fleet, member: Member,
               reachable: Mapping[str, str]) -> InstanceSpec:
    """*member*'s spec, its remote dependencies at the *reachable* addresses."""
    from capstan.image import cmdline as osv_cmdline
    from capstan.services.instances import RunRequest, make_spec

    svc, address = member.service, member.address
    env = list(member.env)
    if address or member.remote:
        hosts = [*member.peers, *(f"{n}={reachable.get(n, '')}" for n in member.remote)]
        env.append(f"FLEET_HOSTS={','.join(hosts)}")
    options: list[str] = []
    if address and fleet.subnet is not None:
        nic = "eth1" if svc.networking == "nat" else "eth0"
        options.append(f"--ip={nic},{address},{fleet.subnet.netmask}")
    segment = f"{fleet.name}@{fleet.path}"
    try:
        spec = make_spec(config, _image_ref(fleet, svc.image), member.name, RunRequest(
            memory=svc.memory, cpus=svc.cpus, networking=svc.networking,
            forwards=svc.ports, volumes=svc.volumes, execute=svc.command, boots=svc.boot,
            envs=(*env, *svc.env), options=tuple(options),
            private_network=(segment if member.host == LOCAL else f"{segment}#{member.host}")
            if address else None,
            private_mac=_mac(member.name) if address else None))
        if spec.cmdline is not None:
            osv_cmdline.validate(spec.cmdline)
    except CapstanError as err:
        wrapped = InputError(f"{fleet.path}: services.{svc.name}: {err}")
        if not isinstance(err, UsageError):  # a bad value in the file stays 65
            wrapped.exit_code = err.exit_code
        raise wrapped from err
    return spec


def _image_ref(fleet: Fleet, image: str) -> str:
    """Image paths in the file are relative to the file."""
    candidate = fleet.path.parent / image
    return str(candidate) if "/" in image or candidate.is_file() else image


def _mac(name: str) -> str:
    h = hashlib.sha256(name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def decide(inst: Instance | None, recorded_digest: str | None, member: Member) -> Action:
    """The action for *member*, given what runs and the digest ``up`` last recorded."""
    if inst is None:
        return Action.CREATE
    if recorded_digest != member.digest:
        return Action.RECREATE
    return Action.KEEP if inst.state.live else Action.START
