"""QEMU/KVM driver: one QEMU process per instance, owned by a :class:`QemuMachine`.

Per instance, ``$CAPSTAN_ROOT/instances/qemu/<name>/`` holds ``disk.qcow2`` (an
overlay on the image), ``instance.json`` (our state), ``osv.config`` (Capstan's
view of it), ``console.log`` (every byte from COM1) and ``qemu.log``. QMP and
the interactive console are unix sockets, so no TCP port is ever needed. The
argv is built by :func:`capstan.drivers.qemu.argv.argv` from what this module
resolves on the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from capstan.core import fs, timestamps
from capstan.core.checks import Finding
from capstan.core.config import Config
from capstan.core.errors import Conflict, ImageError, InputError, NotFound, ToolMissing, UsageError
from capstan.drivers.base import (
    Capability,
    Driver,
    Foreground,
    Instance,
    InstanceSpec,
    InstanceState,
    Volume,
    mac_address,
)
from capstan.drivers.qemu import accel, checks, ports
from capstan.drivers.qemu.argv import Host, Paths, argv
from capstan.drivers.qemu.capstan_made import (
    capstan_instance,
    delete_capstan_made,
    is_capstan_made,
    stop_capstan_made,
)
from capstan.drivers.qemu.foreground import MachineRun
from capstan.drivers.qemu.host import attach_volume, bridge_helper, direct_io, host_interface
from capstan.drivers.qemu.kvmprobe import kvm_verdict
from capstan.drivers.qemu.machine import QemuMachine, find_pid, pid_alive
from capstan.drivers.qemu.state import State, pidfile, run_dir, write_osv_config

LOG = logging.getLogger(__name__)

__all__ = ["QemuDriver"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_QEMU_PATHS = ("qemu-system-x86_64", "/usr/libexec/qemu-kvm", "/usr/local/bin/qemu-system-x86_64")


class QemuDriver(Driver):
    """Run images with ``qemu-system-x86_64`` directly."""

    name = "qemu"
    capabilities = frozenset({Capability.CONSOLE, Capability.LOGS, Capability.PORT_FORWARD,
                              Capability.VOLUMES, Capability.DETACH, Capability.GRACEFUL_STOP,
                              Capability.PRIVATE_NETWORK, Capability.DIRECT_KERNEL})
    settings = checks.SETTINGS

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        return checks.doctor(config, checks.Tools(cls(config).qemu_binary, bridge_helper))

    @property
    def home(self) -> Path:
        """``<root>/instances/qemu``."""
        return self.config.instances / "qemu"

    def _dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise UsageError(f"invalid instance name '{name}': use letters, digits, '.', "
                             "'_' and '-' (at most 64)")
        return self.home / name

    def _lock(self, name: str) -> FileLock:
        """The lock of one instance (kept outside its directory, which comes and goes).

        Held for milliseconds, so waiters poll every 5 ms (filelock's 50 ms would
        make a fleet's launches queue up behind the ``.ports`` lock)."""
        return fs.lock(self.config.root, "qemu", name, poll_interval=0.005)

    def _load(self, name: str, damaged_ok: bool = False) -> State:
        """The state of *name*; with *damaged_ok*, a damaged ``instance.json`` gives
        what can be rebuilt (the QEMU process found by pidfile or QMP socket)."""
        d = self._dir(name)
        path = d / "instance.json"
        try:
            state = State(**json.loads(path.read_text()))
            if not isinstance(state.name, str) or not isinstance(state.qmp, str) or not (
                    state.pid is None or isinstance(state.pid, int)):
                raise TypeError("wrong types")
            if not pid_alive(state.pid, state.qmp):  # killed before it recorded the PID?
                pid = pidfile(d)
                state.pid = pid if pid_alive(pid, state.qmp) else state.pid
            return state
        except FileNotFoundError as err:
            raise NotFound(f"no such instance: {name}") from err
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            if not damaged_ok:
                raise InputError(f"instance {name} is damaged ({path} is unreadable): "
                                 f"delete it with 'capstan delete {name}'") from err
        run = run_dir(d)
        qmp = str(run / "qmp.sock")
        pid = pidfile(d)
        if not pid_alive(pid, qmp):
            pid = find_pid(qmp)
        return State(name=name, image="", image_digest="", disk=str(d / "disk.qcow2"),
                      argv=[], qmp=qmp, console=str(run / "console.sock"),
                      console_log=str(d / "console.log"), qemu_log=str(d / "qemu.log"),
                      pid=pid, damaged=True)

    def _save(self, state: State, folder: Path | None = None) -> None:
        """Write ``instance.json`` into the instance's directory (or *folder*)."""
        data = asdict(state)
        del data["forwards"]  # only needed while creating; ports hold the same facts
        del data["damaged"]
        fs.atomic_write((folder or self._dir(state.name)) / "instance.json",
                        json.dumps(data, indent=2).encode(), 0o600)

    # -- creation -----------------------------------------------------------

    def qemu_binary(self) -> str:
        """The QEMU to run: config ``qemu_path``, then PATH and Capstan's places."""
        candidates = [self.config.qemu_path] if self.config.qemu_path else list(_QEMU_PATHS)
        for candidate in candidates:
            found = shutil.which(candidate)
            if found:
                return found
        raise ToolMissing("no QEMU found: install qemu-system-x86 or set CAPSTAN_QEMU_PATH")

    def accelerator(self, cpu_model: str | None = None) -> str:
        """``qemu_accel``, with ``auto`` resolved for this host (:func:`accel.pick`); an
        ``auto`` kvm also needs QEMU to run a *cpu_model* guest under it here (probed
        once per host and QEMU version: nested KVM can abort QEMU), else tcg with a
        one-line warning."""
        picked = accel.pick(str(self.config.qemu_accel), disable_kvm=bool(self.config.disable_kvm))
        if picked != "kvm" or self.config.qemu_accel != "auto":
            return picked
        verdict = kvm_verdict(self.config.root, self.qemu_binary(), cpu=cpu_model or "host")
        if not verdict.usable:
            LOG.warning("KVM fails here (QEMU aborts under it: %s): running QEMU with TCG "
                        "(slow emulation); see 'capstan doctor'", verdict.reason)
            return "tcg"
        return "kvm"

    def create(self, spec: InstanceSpec) -> Instance:
        """Build the instance in a temporary directory and rename it into place: it
        appears complete or not at all. Conflict when an instance of that name exists."""
        return self._create(spec, replace=False)

    def replace(self, spec: InstanceSpec) -> Instance:
        """:meth:`create`, replacing an instance of that name unless it runs or another
        live run has just created it (Capstan's ``run -i``)."""
        return self._create(spec, replace=True)

    def _create(self, spec: InstanceSpec, *, replace: bool) -> Instance:
        d = self._dir(spec.name)
        if not spec.image.is_file():
            raise NotFound(f"no such image: {spec.image}")
        self.home.mkdir(parents=True, exist_ok=True)
        with self._lock(spec.name):
            fs.sweep(self.home)
            if (d / "instance.json").exists():
                self._claimed(self._load(spec.name, damaged_ok=True))
                if not replace:
                    raise Conflict(f"instance {spec.name} exists: delete it first")
                self._remove(spec.name)
            elif d.exists():
                with contextlib.suppress(OSError):
                    d.rmdir()  # empty: what a crash of an older version left
                if d.exists():
                    raise Conflict(f"{d} exists but is not a pycapstan instance (made by "
                                   "Capstan?); remove it or choose another name")
            staged = fs.temp_dir(d)
            try:
                state = self._prepare(spec, d, staged)
                os.rename(staged, d)
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
        return self._instance(state)

    def _claimed(self, state: State) -> None:
        """Conflict when instance *state* runs, or another live run created it and
        has not started it yet: a same-name race has one winner."""
        if state.pid is None and not state.damaged and state.creator and \
                state.creator != fs.process_token() and fs.owner_alive(state.creator):
            raise Conflict(f"instance {state.name} is being started by another run "
                           f"(process {state.creator.split('-')[0]})")
        if pid_alive(state.pid, state.qmp) or find_pid(state.qmp):
            raise Conflict(f"instance {state.name} is already running")

    def _prepare(self, spec: InstanceSpec, d: Path, staged: Path) -> State:
        """Write the instance *d* into *staged*: paths in its state name *d*."""
        image = spec.image.absolute()
        disk = d / "disk.qcow2"
        # with a kernel the command line goes to -append; the disk may be kernel-less,
        # its byte 512 the filesystem
        written = replace(spec, cmdline=None) if spec.kernel else spec
        digest = self.disks.prepare(written, staged / disk.name).digest
        run = run_dir(d)
        state = State(
            name=spec.name, image=str(image), image_digest=digest, disk=str(disk),
            argv=[], qmp=str(run / "qmp.sock"), console=str(run / "console.sock"),
            console_log=str(d / "console.log"), qemu_log=str(d / "qemu.log"),
            created=timestamps.now(), accel=self.accelerator(spec.cpu_model),
            creator=fs.process_token(),
        )
        with self._lock(".ports"):  # allocation and record, atomic among instances
            state.argv = self._argv(spec, state)
            self._save(state, staged)  # hidden by name from listings, seen by ports.allocate
        write_osv_config(spec, state, folder=staged, aio=self.config.qemu_aio_type)
        return state

    def _argv(self, spec: InstanceSpec, state: State) -> list[str]:
        """QEMU's argv for *spec*: the host's part resolved here (ports allocated
        and recorded in *state*, volumes checked, MACs chosen), then :func:`argv`."""
        volumes = tuple(attach_volume(vol) for vol in spec.volumes)
        state.volumes += [[str(vol.path), str(vol.format)] for vol in volumes]
        helper = None
        if spec.networking == "nat":
            forwards = tuple(ports.allocate(fwd, self.home) for fwd in spec.forwards)
            state.forwards += forwards
            state.ports += [str(rule) for rule in forwards]
        else:
            forwards = spec.forwards
            helper = host_interface(spec)
        resolved = replace(spec, volumes=volumes, forwards=forwards,
                           mac=mac_address(spec.mac) if spec.networking in ("bridge", "tap")
                           else spec.mac,
                           private_mac=mac_address(spec.private_mac)
                           if spec.private_network else spec.private_mac)
        paths = Paths(disk=Path(state.disk).absolute(), console=Path(state.console).absolute(),
                      console_log=Path(state.console_log).absolute(),
                      qmp=Path(state.qmp).absolute())  # a relative CAPSTAN_ROOT
        host = Host(qemu=self.qemu_binary(), accel=state.accel,
                    aio=self._boot_aio(paths.disk), bridge_helper=helper)
        return argv(resolved, paths, host)

    def _boot_aio(self, disk: Path) -> str:
        """``qemu_aio_type`` for the boot disk; ``native`` needs ``O_DIRECT`` (the disk
        then gets ``cache=none``), so without it here the disk gets ``threads``."""
        aio = str(self.config.qemu_aio_type)
        if aio == "native" and not direct_io(disk):
            LOG.warning("%s cannot use O_DIRECT here: the boot disk uses aio=threads", disk)
            return "threads"
        return aio

    # -- lifecycle ----------------------------------------------------------

    def start(self, name: str) -> Instance:
        state, machine = self._launch(name, outlive=True)
        machine.close()
        return self._instance(state)

    def _launch(self, name: str, outlive: bool) -> tuple[State, QemuMachine]:
        """Start QEMU for *name* and wait until it is ready (its QMP connection
        open); unless *outlive*, it dies with the CLI."""
        with self._lock(name):
            state = self._load(name)
            self._claimed(state)
            self._check_image(state)
            self._check_volumes(state)
            run = Path(state.qmp).parent
            if run != self._dir(name):  # its parent too: /tmp/capstan-UID may be squatted
                fs.private_dir(run.parent)
                fs.private_dir(run)
            Path(state.console).unlink(missing_ok=True)
            LOG.debug("qemu argv: %s", state.argv)
            machine = QemuMachine(name, qmp=Path(state.qmp), log=Path(state.qemu_log))
            state.pid = machine.spawn(state.argv, outlive=outlive)
            fs.atomic_write(self._dir(name) / "qemu.pid", f"{state.pid}\n".encode(), 0o600)
            self._save(state)
        try:
            machine.wait_ready()
        except BaseException:
            machine.close()
            raise
        return state, machine

    def _check_image(self, state: State) -> None:
        """Refuse to boot *state*'s overlay on any image but the one it was made on."""
        image = Path(state.image)
        if not image.is_file():
            raise NotFound(f"instance {state.name}: its image {image} is gone: delete the "
                           "instance and run the image again")
        digest = self.disks.facts(image).sha256
        if state.image_digest and digest != state.image_digest:
            raise ImageError(f"instance {state.name} was created on {image} with sha256 "
                             f"{state.image_digest}, which now has sha256 {digest}: delete "
                             "the instance and run the image again")

    def _check_volumes(self, state: State) -> None:
        """Probe *state*'s volumes again: each must still be a standalone image of the
        format its ``-drive`` names (a file may have been replaced since)."""
        for path, fmt in state.volumes:
            self.disks.attachable(Volume(Path(path), fmt))

    def foreground(self, name: str) -> Foreground:
        """Launch *name* bound to this process (QEMU dies with the CLI); its console is
        followed from where it stands now."""
        log = Path(self._load(name).console_log)
        offset = log.stat().st_size if log.exists() else 0  # this run's output starts here
        _, machine = self._launch(name, outlive=False)
        return MachineRun(machine, log, offset)

    def stop(self, name: str, timeout: float = 30) -> Instance:
        if is_capstan_made(self._dir(name)):
            return stop_capstan_made(self._dir(name), timeout)
        state = self._load(name, damaged_ok=True)
        with self._machine(state) as machine:
            machine.shutdown(timeout)
        state.pid = machine.pid
        return self._instance(state)

    @staticmethod
    def _machine(state: State) -> QemuMachine:
        """The QEMU of *state*, attached to (by its pid, else by its QMP socket)."""
        return QemuMachine.attach(state.name, qmp=Path(state.qmp), pid=state.pid,
                                  log=Path(state.qemu_log))

    def delete(self, name: str) -> None:
        if is_capstan_made(self._dir(name)):
            with self._lock(name):
                delete_capstan_made(self._dir(name))
            return
        self.stop(name)
        lock = self._lock(name)
        with lock:
            self._remove(name)
            # Nothing is left to guard; a waiter on this lock will find no instance.
            Path(lock.lock_file).unlink(missing_ok=True)

    def _remove(self, name: str) -> None:
        state = self._load(name, damaged_ok=True)
        if pid_alive(state.pid, state.qmp):
            raise Conflict(f"instance {name} is still running")
        for sock in (state.qmp, state.console):
            Path(sock).unlink(missing_ok=True)
        run = Path(state.qmp).parent
        if run != self._dir(name):
            shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(self._dir(name))

    # -- queries ------------------------------------------------------------

    def _instance(self, state: State) -> Instance:
        running = pid_alive(state.pid, state.qmp)
        status = InstanceState.RUNNING if running else InstanceState.STOPPED
        return Instance(
            name=state.name, driver=self.name,
            state=InstanceState.DAMAGED if state.damaged else status,
            image=state.image, pid=state.pid if running else None,
            ports=tuple(state.ports), image_digest=state.image_digest, created=state.created,
            extra={"accel": state.accel, "console": state.console, "qmp": state.qmp,
                   "argv": tuple(state.argv)},
        )

    def get(self, name: str) -> Instance:
        if is_capstan_made(self._dir(name)):
            return capstan_instance(self._dir(name), self.name)
        return self._instance(self._load(name, damaged_ok=True))

    def free_memory_mib(self) -> int | None:
        """MemAvailable of /proc/meminfo (None where there is no such file)."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
        return None

    def list(self) -> Iterator[Instance]:
        if not self.home.is_dir():
            return
        for d in sorted(self.home.iterdir()):
            if d.name.startswith("."):
                continue  # being created
            if (d / "instance.json").is_file():
                with contextlib.suppress(NotFound):
                    yield self.get(d.name)
            elif is_capstan_made(d):
                yield capstan_instance(d, self.name)

    def log_path(self, name: str) -> Path:
        return Path(self._load(name).console_log)

    def console(self, name: str, stdin: int, stdout: BinaryIO, escape: bytes | None) -> None:
        from capstan.core.console import pump

        state = self._load(name)
        if not pid_alive(state.pid, state.qmp):
            raise Conflict(f"instance {name} is not running")
        with self._machine(state).open_console(Path(state.console)) as guest:
            pump(guest, stdin, stdout, escape)
