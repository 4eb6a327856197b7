"""The plan of a fleet: every instance the file asks for, and what ``up`` does to each."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from capstan.core.config import Config
from capstan.core.errors import CapstanError, InputError, UsageError
from capstan.drivers.base import Instance, InstanceSpec
from capstan.services.fleet.parse import Fleet, Service

__all__ = ["Action", "Member", "decide", "plan"]


class Action(enum.StrEnum):
    """What ``up`` does to one instance (the value is what ``fleet up`` shows)."""

    CREATE = "create"  # absent: create and start it
    RECREATE = "recreate"  # its spec or image changed: delete, create and start it
    START = "start"  # as asked but not running: start it
    KEEP = "keep"  # as asked and running: leave it
    REMOVE = "remove"  # no longer in the file: stop and delete it


@dataclass(frozen=True)
class Member:
    """One instance the file asks for."""

    name: str
    service: Service
    index: int
    address: str | None
    spec: InstanceSpec
    digest: str


def plan(config: Config, fleet: Fleet) -> list[Member]:
    """Every instance the file asks for, with its spec (validated, nothing started)."""
    from capstan.image import cmdline as osv_cmdline
    from capstan.services.disks import image_facts
    from capstan.services.instances import RunRequest, make_spec

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
                spec = make_spec(config, _image_ref(fleet, svc.image), name, RunRequest(
                    memory=svc.memory, cpus=svc.cpus, networking=svc.networking,
                    forwards=svc.ports, volumes=svc.volumes,
                    execute=svc.command, boots=svc.boot, envs=(*env, *svc.env),
                    options=tuple(options),
                    private_network=f"{fleet.name}@{fleet.path}" if address else None,
                    private_mac=_mac(name) if address else None))
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


def decide(inst: Instance | None, recorded_digest: str | None, member: Member) -> Action:
    """The action for *member*, given what runs and the digest ``up`` last recorded."""
    if inst is None:
        return Action.CREATE
    if recorded_digest != member.digest:
        return Action.RECREATE
    return Action.KEEP if inst.state.live else Action.START
