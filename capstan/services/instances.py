"""Services behind ``capstan run`` and the instance commands."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from capstan.core.config import Config
from capstan.core.errors import (
    CapstanError,
    ConfigError,
    GuestTimeout,
    ImageError,
    NotFound,
    UsageError,
)
from capstan.core.sizes import parse_size
from capstan.drivers.base import (
    Driver,
    Foreground,
    Instance,
    InstanceSpec,
    LogReader,
    PortForward,
    Volume,
    console_verdict,
    mac_address,
    required_capabilities,
)
from capstan.image import cmdline as osv_cmdline
from capstan.image.loader import PROBE_KERNEL, probe_kernel_path
from capstan.services.disks import image_facts, open_driver
from capstan.services.store import LocalRepository

__all__ = ["Driver", "LogSource", "boot_cmdline", "create_instance", "driver_for", "env_token",
           "RunRequest", "exists", "follow_logs", "instance_log", "instances_using", "make_spec",
           "memory_mib", "run_foreground"]

KERNEL_LESS_BOOT = "--rootfs=rofs runscript /run/default;"
#: a QEMU ``-cpu`` value: a model, then ``+feature``, ``-feature`` or ``prop=value`` items
_CPU = re.compile(r"(?!help$)[A-Za-z0-9][\w.-]*(,[+-]?[A-Za-z0-9][\w.-]*(=[\w.-]+)?)*", re.ASCII)
_ENV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\??)=(.*)", re.DOTALL)


def env_token(text: str) -> str:
    """``KEY=VALUE`` as the hard option ``--env=KEY=VALUE``; ``KEY?=VALUE`` stays soft
    (set only when the variable is still unset)."""
    match = _ENV.fullmatch(text)
    if match is None:
        raise UsageError(f"invalid --env '{text}': use KEY=VALUE (or KEY?=VALUE)")
    value = match.group(3)
    if any(c in value for c in "\t\n\0"):
        raise UsageError(f"invalid --env '{text}': tabs, newlines and NUL cannot be passed")
    return f"--env={match.group(1)}{match.group(2)}={value.replace(' ', chr(92) + ' ')}"


def boot_cmdline(current: str, execute: str | None, boots: Sequence[str],
                 envs: Sequence[str], loader_options: Sequence[str] = ()) -> str | None:
    """The command line to write for a run, or None to keep the image's own.

    ``-e`` is verbatim; else ``--boot`` names give a runscript chain; else the
    image's application part is kept. ``--env`` options and *loader_options*
    (e.g. ``--ip=...``) go in front, and the image's ``--rootfs=`` choice is kept.
    """
    if execute is None and not boots and not envs and not loader_options:
        return None
    options, app = osv_cmdline.split(current)
    if execute:
        app = execute
    elif boots:
        app = "".join(f"runscript /run/{b.strip()};" for b in boots)
    rootfs = [o for o in options if o.startswith("--rootfs=")]
    kept = [o for o in options if not o.startswith("--rootfs=")] if not execute else []
    return " ".join([*rootfs, *kept, *loader_options, *(env_token(e) for e in envs),
                     app]).strip()


def memory_mib(text: str) -> int:
    """``-m`` as MiB (``1G``, ``512M``, a bare number is MiB)."""
    mib = parse_size(text) // (1 << 20)
    if mib < 1:
        raise UsageError(f"invalid memory size '{text}': at least 1M")
    return mib


@dataclass(frozen=True)
class RunRequest:
    """What ``capstan run`` or a fleet service asks of a new instance, as given (checked
    by :func:`make_spec`): hardware, networking, *forwards* and *volumes* in their
    command-line forms, the boot (*execute* verbatim, else *boots* config sets, with
    *envs* and OSv *options* in front), and for direct kernel boot the *machine* and
    *kernel*."""

    memory: str = "1G"
    cpus: int = 2
    networking: str = "nat"
    bridge: str | None = None
    mac: str | None = None
    forwards: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    execute: str | None = None
    boots: tuple[str, ...] = ()
    envs: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    cpu_model: str | None = None
    private_network: str | None = None
    private_mac: str | None = None
    machine: str | None = None
    kernel: str | None = None


def make_spec(config: Config, image_ref: str, name: str,
              request: RunRequest = RunRequest()) -> InstanceSpec:
    """Validate every run option and resolve the image; nothing is started.

    With a *kernel* (machine ``microvm`` unless given) the command line is the VMM's:
    ``--nopci`` (a driver whose guests see PCI drops it), then
    the image's own (``--rootfs=rofs runscript /run/default;`` for a kernel-less
    image) as changed by *execute*, *boots*, *envs* and *options*.
    """
    r = request
    if r.cpus < 1:
        raise UsageError(f"invalid cpu count {r.cpus}: at least 1")
    if r.cpu_model is not None and not _CPU.fullmatch(r.cpu_model):
        raise UsageError(f"invalid --cpu {r.cpu_model!r}: use a model with optional "
                         "features, e.g. max or host,+avx2,pmu=off")
    parsed_forwards = tuple(PortForward.parse(f) for f in r.forwards)
    parsed_volumes = tuple(_volume(v) for v in r.volumes)
    mac = None if r.mac is None else mac_address(r.mac)
    mib = memory_mib(r.memory)
    image = LocalRepository(config.root).resolve(image_ref, "qemu")
    kernel_path = _kernel(config, r.kernel, r.machine)
    machine = r.machine or ("microvm" if kernel_path else "pc")
    text = _spec_cmdline(config, image, r, direct=kernel_path is not None)
    return InstanceSpec(name=name, image=image, memory_mib=mib, cpus=r.cpus,
                        networking=r.networking, bridge=r.bridge, mac=mac,
                        forwards=parsed_forwards,
                        volumes=parsed_volumes, cmdline=text, cpu_model=r.cpu_model,
                        private_network=r.private_network, private_mac=r.private_mac,
                        machine=machine, kernel=kernel_path)


def _spec_cmdline(config: Config, image: Path, r: RunRequest, *, direct: bool) -> str | None:
    """The command line *r* gives *image* (None: the image's own); *direct*: for
    direct kernel boot."""
    if direct:
        base = image_facts(config.root, image).cmdline or KERNEL_LESS_BOOT
        text = boot_cmdline(base, r.execute, r.boots, r.envs, r.options) or base
        if "--nopci" not in osv_cmdline.split(text)[0]:
            text = f"--nopci {text}"
        osv_cmdline.validate(text)
        return text
    if r.execute is None and not (r.boots or r.envs or r.options):
        return None
    current = image_facts(config.root, image).cmdline
    if current is None:
        raise ImageError(f"{image}: not an OSv image with a command-line area (a "
                         "kernel-less image takes it from the VMM), so its command "
                         "line cannot be set")
    return boot_cmdline(current, r.execute, r.boots, r.envs, r.options)


def _kernel(config: Config, ref: str | None, machine: str | None) -> Path | None:
    """The kernel file of ``--kernel``: a file, a kernel in the repository (``pull -p
    kernel``, ``base import --kernel``) or ``probe-kernel`` (the one shipped), checked
    against *machine* and to be a PVH kernel ELF."""
    if ref is None:
        if machine == "microvm":
            raise UsageError("--machine microvm boots a kernel directly: give --kernel K "
                             "(OSv's loader-stripped.elf, or probe-kernel)")
        return None
    if machine not in (None, "microvm"):
        raise UsageError("--kernel boots without the disk's loader: use it with "
                         "--machine microvm")
    from capstan.image.kernel import read_kernel

    path = probe_kernel_path() if ref == PROBE_KERNEL else \
        LocalRepository(config.root).resolve(ref, "kernel", kind="kernel")
    read_kernel(path)
    return path.absolute()


def create_instance(driver: Driver, spec: InstanceSpec, *, replace: bool = False) -> Instance:
    """Create *spec* with *driver*, first checking the driver can do what *spec* asks
    (UnsupportedOperation naming the missing capability). With *replace*, a stopped
    instance of that name may be replaced where the driver allows it (QEMU)."""
    driver.require(*required_capabilities(spec))
    return driver.replace(spec) if replace else driver.create(spec)


def _volume(text: str) -> Volume:
    """``--volume NAME`` also finds ``./volumes/NAME`` and its settings file; the
    format is probed (:func:`capstan.services.volumes.attachable`)."""
    from capstan.services.volumes import attachable, settings

    vol = Volume.parse(text)
    name = text.split(":", 1)[0]
    local = Path("volumes") / name
    if not vol.path.exists() and "/" not in name and local.is_file():
        rest = text[len(name):]
        escaped = str(local.absolute()).replace(":", "\\:")
        vol = Volume.parse(f"{escaped}{rest}", settings(local))
    return attachable(vol)


def instances_using(config: Config, folder: Path) -> list[str]:
    """Names of the QEMU instances whose image lies in *folder* (an image's directory)."""
    from capstan.drivers.qemu import QemuDriver

    top = folder.resolve()
    return [inst.name for inst in QemuDriver(config).list()
            if inst.image and Path(inst.image).resolve().parent == top]


def driver_for(config: Config, name: str | None) -> Driver:
    """The driver *name*, or the configured one (an unknown configured name is a
    configuration error)."""
    if name is None:
        try:
            return open_driver(config.hypervisor, config)
        except NotFound as err:
            where = config.sources.get("hypervisor", "configuration")
            raise ConfigError(f"{where}: hypervisor: {err}") from err
    return open_driver(name, config)


def exists(driver: Driver, name: str) -> bool:
    """Whether *driver* has an instance *name*."""
    try:
        driver.get(name)
    except (NotFound, UsageError):
        return False
    return True


def run_foreground(driver: Driver, name: str, out: BinaryIO, timeout: float | None,
                   *, remove: bool = False) -> int:
    """Start *name*, stream its console to *out* until the guest ends.

    Returns 0 after a clean power-off, or the application's non-zero status when the
    guest reports one; raises GuestFailure for a crash, GuestTimeout after *timeout*
    (the guest is stopped). Ctrl-C stops the guest gracefully (a second one stops it
    at once) and is re-raised. *remove* deletes the instance afterwards, whatever
    happened.
    """
    try:
        return _follow(driver, name, _Console(out), timeout)
    finally:
        if remove:
            driver.delete(name)


class _Console:
    """The terminal a foreground run writes to, and everything written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.seen = bytearray()

    def write(self, data: bytes) -> None:
        if data:
            self.seen.extend(data)
            self.out.write(data)
            self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(f"\r\ncapstan: {text}...\r\n".encode())
        self.out.flush()


def _follow(driver: Driver, name: str, console: _Console, timeout: float | None) -> int:
    """The foreground run loop, over the driver's :class:`Foreground` primitives."""
    run: Foreground | None = None
    try:
        run = driver.foreground(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while run.running():
            console.write(run.read())
            if deadline is not None and time.monotonic() > deadline:
                run.stop()
                raise GuestTimeout(f"instance {name} did not finish within {timeout} s")
            time.sleep(run.poll_seconds)
    except KeyboardInterrupt:  # also while the instance is starting
        console.note(run.interrupt_note if run else Foreground.interrupt_note)
        _interrupted(driver, name, run)
        raise
    finally:
        if run is not None:
            try:
                with contextlib.suppress(CapstanError):
                    console.write(run.read())
            finally:
                run.close()
    run.check_exit()
    return console_verdict(name, bytes(console.seen))


def _interrupted(driver: Driver, name: str, run: Foreground | None) -> None:
    """Stop *name* after a Ctrl-C (through *run*, or the driver while it was starting);
    a second Ctrl-C stops it at once."""
    try:
        if run is not None:
            run.stop()
        else:
            driver.stop(name)
    except KeyboardInterrupt:
        if run is not None:
            run.stop(hard=True)
        else:
            driver.stop(name, timeout=0)


@dataclass(frozen=True)
class LogSource:
    """A console log to follow: its instance, its reader, and whether it still grows."""

    name: str
    log: LogReader
    running: Callable[[], bool]


def instance_log(driver: Driver, name: str) -> LogSource:
    """The console log of *name* (a missing instance is NotFound when followed)."""
    return LogSource(name, driver.open_log(name), lambda: driver.get(name).state.live)


def follow_logs(sources: Sequence[LogSource], out: BinaryIO, *, follow: bool,
                prefix: bool, interval: float = 0.1) -> None:
    """Copy the logs of *sources* to *out*; with *follow*, until none is running (then
    each log is read to its end); the logs are closed after.

    With *prefix* every line starts with its instance's name (a last line without
    its newline is written at the end); else the bytes are copied as they are.
    """
    lines = _Lines(out, sources, prefix=prefix)
    try:
        while follow:
            alive = False
            for source in sources:
                alive = source.running() or alive  # sample before reading: nothing is lost
                lines.write(source.name, source.log.read())
            out.flush()
            if not alive:
                break
            time.sleep(interval)
        for source in sources:
            lines.write(source.name, source.log.rest())
        lines.end()
    finally:
        for source in sources:
            source.log.close()


class _Lines:
    """Log output to *out*, each line prefixed with its instance's name (*prefix*)."""

    def __init__(self, out: BinaryIO, sources: Sequence[LogSource], *, prefix: bool) -> None:
        self.out, self.prefix = out, prefix
        self.width = max((len(s.name) for s in sources), default=0)
        self.partial = {s.name: b"" for s in sources}

    def write(self, name: str, data: bytes) -> None:
        if not self.prefix:
            self.out.write(data)
            return
        *lines, self.partial[name] = (self.partial[name] + data).split(b"\n")
        for line in lines:
            self.out.write(f"{name:<{self.width}} | ".encode() + line.rstrip(b"\r") + b"\n")

    def end(self) -> None:
        """Write the last lines that had no newline."""
        for name, rest in self.partial.items():
            if rest:
                self.out.write(f"{name:<{self.width}} | ".encode() + rest + b"\n")
        self.out.flush()
