"""``capstan volume create|delete|list``: disks kept in a package's ``volumes/``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cliff.command import Command
from cliff.lister import Lister

from capstan.commands import app_config
from capstan.core.names import argument

_COLUMNS = ("Name", "Format", "Size", "Disk size", "Path")


def _package(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", "--package-dir", type=Path, default=Path("."), metavar="DIR",
                        help="package root (default: the current directory)")


class VolumeCreate(Command):
    """Create a volume in ./volumes of the current package"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME", type=argument("volume"))
        parser.add_argument("-s", "--size", default="1G", help="size, e.g. 512M (1G)")
        parser.add_argument("-f", "--format", dest="disk_format", default="raw",
                            help="raw, qcow2, vmdk, vdi, vhd or vhdx (raw)")
        _package(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.core.sizes import format_size
        from capstan.services import volumes

        vol = volumes.create(parsed_args.package_dir, parsed_args.name, parsed_args.size,
                             parsed_args.disk_format, root=app_config(self).root)
        self.app.stdout.write(f"Created volume: {vol.name} ({vol.format}, "
                              f"{format_size(vol.size)}) at {vol.path}\n")
        return 0


class VolumeDelete(Command):
    """Delete a volume from ./volumes of the current package"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME", type=argument("volume"))
        parser.add_argument("-v", "--verbose-delete", action="store_true",
                            help="accepted for Capstan; has no effect")
        _package(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services import volumes

        volumes.delete(parsed_args.package_dir, parsed_args.name, root=app_config(self).root)
        self.app.stdout.write(f"Deleted volume: {parsed_args.name}\n")
        return 0


class VolumeList(Lister):
    """List the volumes of the current package"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _package(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import volumes

        rows = [(v.name, v.format, v.size, v.disk_size, str(v.path))
                for v in volumes.list_volumes(parsed_args.package_dir)]
        return _COLUMNS, rows
