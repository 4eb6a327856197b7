"""``capstan run``, ``instances``, ``start``, ``stop``, ``delete``, ``logs``, ``console``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cliff.command import Command
from cliff.lister import Lister

from capstan.commands import app_config
from capstan.core.errors import BackendError, CapstanError, UsageError
from capstan.core.names import argument, check_name

if TYPE_CHECKING:
    from capstan.services.instances import Driver

_COLUMNS = ("Name", "Platform", "Status", "Image", "PID", "Ports", "Created")


def _driver(command: Command, name: str | None) -> Driver:
    from capstan.services.instances import driver_for

    return driver_for(app_config(command), name)


def _add_hypervisor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--hypervisor", metavar="DRIVER",
                        help="driver to use (default: config 'hypervisor', qemu)")


class Run(Command):
    """Run an image as an instance (foreground, or detached with -d)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", nargs="?", metavar="NAME",
                            help="instance name; without -i also the image (name or file)")
        parser.add_argument("-i", "--image", help="image: repository name or file path")
        _add_hypervisor(parser)
        parser.add_argument("-m", "--memory", default="1G", help="memory, e.g. 512M (1G)")
        parser.add_argument("-c", "--cpus", type=int, default=2, help="vCPUs (2)")
        parser.add_argument("-n", "--networking", default="nat",
                            choices=("nat", "bridge", "tap", "none"), help="networking (nat)")
        parser.add_argument("-b", "--bridge", metavar="DEVICE",
                            help="bridge (bridge networking, default virbr0) or tap device")
        parser.add_argument("--mac", help="guest MAC for bridge/tap (random by default)")
        parser.add_argument("-f", "--forward", action="append", default=[],
                            metavar="[ADDR:]HOST:GUEST[/udp]",
                            help="port forward, bound to 127.0.0.1 unless ADDR is given; "
                                 "HOST 0 picks a free port")
        parser.add_argument("-e", "--execute", help="command line, verbatim")
        parser.add_argument("--boot", action="append", default=[],
                            help="run configuration /run/BOOT (repeatable)")
        parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                            help="environment variable (repeatable)")
        parser.add_argument("--volume", action="append", default=[],
                            metavar="PATH[:format=F][:cache=C][:aio=A]", help="extra disk")
        parser.add_argument("--cpu", dest="cpu_model",
                            help="QEMU -cpu model (default: host under KVM, max under TCG)")
        parser.add_argument("--machine", choices=("pc", "microvm"),
                            help="QEMU machine (pc; microvm with --kernel): microvm is "
                                 "virtio-mmio, no PCI or ACPI, and needs --kernel")
        parser.add_argument("--kernel", metavar="KERNEL",
                            help="boot this kernel ELF directly (PVH; 'probe-kernel': the "
                                 "shipped probe), the command line given by the VMM "
                                 "(qemu microvm, firecracker, cloud-hypervisor)")
        parser.add_argument("-d", "--detach", action="store_true",
                            help="run in the background")
        parser.add_argument("--rm", action="store_true",
                            help="delete the instance when the guest ends (foreground)")
        parser.add_argument("--timeout", type=float,
                            help="stop the guest after this many seconds (foreground)")
        parser.add_argument("--persist", action="store_true",
                            help="accepted for Capstan: instances always persist")
        parser.add_argument("--dry-run", action="store_true",
                            help="print what would be created, and create nothing")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.instances import RunRequest, create_instance, exists, make_spec

        args = parsed_args
        image_ref, name = args.image, args.name
        if image_ref is None and name is None:
            image_ref = name = self._build_here(args)
            args.execute, args.boot, args.env = None, [], []  # already in the image
        driver = _driver(self, args.hypervisor)
        if image_ref is None and exists(driver, name):
            # Capstan's step 2: `run NAME` relaunches the instance, disk state included
            if args.execute is not None or args.boot or args.env:
                raise UsageError(f"instance {name} exists: delete it first to run it with "
                                 "another command line")
            self.app.stdout.write(f"Running (already existing) instance: {name}\n")
            return self._launch(driver, name, args)
        if image_ref is None:
            image_ref = name
            name = Path(name).stem if Path(name).is_file() else name.replace("/", "-")
        elif name is None:
            name = Path(image_ref).stem if Path(image_ref).is_file() else \
                image_ref.replace("/", "-")
        check_name(name, "instance")
        spec = make_spec(app_config(self), image_ref, name, RunRequest(
            memory=args.memory, cpus=args.cpus, networking=args.networking,
            bridge=args.bridge, mac=args.mac, forwards=tuple(args.forward),
            volumes=tuple(args.volume), execute=args.execute, boots=tuple(args.boot),
            envs=tuple(args.env), cpu_model=args.cpu_model, machine=args.machine,
            kernel=args.kernel))
        if args.dry_run:
            self.app.stdout.write("".join(f"would {line}\n" for line in driver.dry_run(spec)))
            return 0
        create_instance(driver, spec, replace=True)  # Capstan's run -i: a new instance
        self.app.stdout.write(f"Created instance: {name}\n")
        return self._launch(driver, name, args, created=True)

    def _launch(self, driver: Driver, name: str, args: argparse.Namespace,
                created: bool = False) -> int:
        """Start *name* detached or in the foreground (a run that cannot start a new
        instance leaves nothing behind)."""
        if args.detach:
            try:
                inst = driver.start(name)
            except CapstanError:
                if created:
                    driver.delete(name)
                raise
            ports = f" ports {', '.join(inst.ports)}" if inst.ports else ""
            pid = f" (pid {inst.pid})" if inst.pid else ""
            self.app.stdout.write(f"Started instance: {name}{pid}{ports}\n")
            return 0
        from capstan.services.instances import run_foreground

        self.app.stdout.flush()
        return run_foreground(driver, name, sys.stdout.buffer, args.timeout, remove=args.rm)

    def _build_here(self, args: argparse.Namespace) -> str:
        """Capstan's run without an image: build the Capstanfile or compose the package
        in the current directory into the repository; the image's name."""
        from capstan.core.errors import InputError
        from capstan.services.store import LocalRepository

        config = app_config(self)
        here = Path.cwd()
        if (here / "Capstanfile").is_file():
            from capstan.services.capstanfile import build

            name = here.name
            if not LocalRepository(config.root).image_file(name).is_file():
                build(config, here, name)
            return name
        if (here / "meta" / "package.yaml").is_file():
            from capstan.services.images import PackageOptions, compose_package
            from capstan.services.packages import manifest_of

            name = manifest_of(here).name
            compose_package(config, here, name=name, options=PackageOptions(
                execute=args.execute, boots=tuple(args.boot), envs=tuple(args.env),
                pull_missing=True, s3=self.app.options.s3))
            self.app.stdout.write(f"Composed package {name}\n")
            return name
        raise InputError("missing Capstanfile or package metadata here: give an image "
                         "(capstan run -i IMAGE [NAME]) or run in a project directory")


class Instances(Lister):
    """List instances, with state reconciled against live processes"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_hypervisor(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        driver = _driver(self, parsed_args.hypervisor)
        rows = [(i.name, i.driver, i.state.value, i.image, i.pid or "", " ".join(i.ports),
                 i.created) for i in driver.list()]
        return _COLUMNS, rows


class _EachInstance(Command):
    """Apply one driver call to every NAME, finishing what it can."""

    verb = ""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("names", nargs="+", metavar="NAME", type=argument("instance"),
                            help="instance name")
        _add_hypervisor(parser)
        return parser

    def act(self, driver: Driver, name: str, args: argparse.Namespace) -> None:
        raise NotImplementedError

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        driver = _driver(self, parsed_args.hypervisor)
        failed: list[CapstanError] = []
        for name in parsed_args.names:
            try:
                self.act(driver, name, parsed_args)
                self.app.stdout.write(f"{self.verb} instance: {name}\n")
            except CapstanError as err:
                if len(parsed_args.names) == 1:
                    raise  # its one line is the CLI's
                self.app.stderr.write(f"capstan: {err}\n")
                failed.append(err)
        if failed:
            summary = BackendError(f"{len(failed)} of {len(parsed_args.names)} instances failed")
            summary.exit_code = max(f.exit_code for f in failed)
            raise summary
        return 0


class Start(_EachInstance):
    """Start stopped instances in the background"""

    verb = "Started"

    def act(self, driver: Driver, name: str, args: argparse.Namespace) -> None:
        driver.start(name)


class Stop(_EachInstance):
    """Stop instances: ACPI power button, then quit, then kill"""

    verb = "Stopped"

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-t", "--timeout", type=float, default=30,
                            help="seconds to wait for a graceful power-off (30)")
        return parser

    def act(self, driver: Driver, name: str, args: argparse.Namespace) -> None:
        driver.get(name)
        driver.stop(name, args.timeout)


class Delete(_EachInstance):
    """Stop instances and delete everything they own"""

    verb = "Deleted"

    def act(self, driver: Driver, name: str, args: argparse.Namespace) -> None:
        driver.delete(name)


class Logs(Command):
    """Print an instance's console log (-f to follow it)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("-f", "--follow", action="store_true",
                            help="keep printing output until the instance stops")
        _add_hypervisor(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.instances import follow_logs, instance_log

        driver = _driver(self, parsed_args.hypervisor)
        out = sys.stdout.buffer
        if not parsed_args.follow:
            out.write(driver.read_log(parsed_args.name))
            out.flush()
            return 0
        follow_logs([instance_log(driver, parsed_args.name)], out, follow=True, prefix=False)
        return 0


class Console(Command):
    """Attach to an instance's serial console (Ctrl-] detaches)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME")
        _add_hypervisor(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.core.console import ESCAPE, raw_terminal

        driver = _driver(self, parsed_args.hypervisor)
        stdin = sys.stdin.fileno()
        if not os.isatty(stdin):
            driver.console(parsed_args.name, stdin, sys.stdout.buffer, None)
            return 0
        self.app.stderr.write(f"Connected to {parsed_args.name} (Ctrl-] detaches)\n")
        with raw_terminal(stdin):
            driver.console(parsed_args.name, stdin, sys.stdout.buffer, ESCAPE)
        self.app.stderr.write("\nDetached\n")
        return 0
