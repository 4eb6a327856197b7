"""``capstan compose`` and ``capstan image info|ls|cat|tree|du|diff|convert``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne

from capstan.commands import app_config
from capstan.core.errors import UsageError
from capstan.core.names import argument
from capstan.core.sizes import parse_size

if TYPE_CHECKING:
    from capstan.services.imagefile import DiskFormat, OsvImage, TreeItem

Rows = tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]


def _show(obj: Any) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    fields = dataclasses.asdict(obj)
    return tuple(fields), tuple(str(v) if isinstance(v, Path) else v for v in fields.values())


def _disk_format(text: str) -> DiskFormat:
    from capstan.services.imagefile import disk_format

    return disk_format(text)


def _add_image(parser: argparse.ArgumentParser, name: str = "image") -> None:
    parser.add_argument(name, metavar=name.upper(),
                        help="image file, or image name in the local repository")


def _open_image(command: Command, ref: str) -> OsvImage:
    """Open IMAGE, a file path or a name in the local repository."""
    from capstan.services.imagefile import open_image

    return open_image(app_config(command), ref)


class Compose(Command):
    """Compose a directory (or file) into an OSv image, on the host"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", nargs="?", metavar="IMAGE_NAME", type=argument("image"),
                            help="store as this image in the local repository")
        parser.add_argument("path", metavar="PATH",
                            help="directory uploaded as / (or a file uploaded as /NAME)")
        parser.add_argument("-o", "--output", type=Path,
                            help="write the image to this file instead of the repository")
        parser.add_argument("-l", "--loader-image", "--loader_image", "-loader_image",
                            dest="loader", metavar="LOADER",
                            help="loader: repository name, file, or 'probe-loader' "
                                 "(default: config 'loader', osv-loader)")
        parser.add_argument("-c", "--command-line", "--command_line", "-command_line",
                            dest="command_line", metavar="CMDLINE",
                            help="kernel command line (default: runscript /run/default;)")
        parser.add_argument("-s", "--size", type=parse_size, default=0,
                            help="minimum virtual size, e.g. 512M or 10G")
        parser.add_argument("--fs", choices=("rofs", "zfs"), default="rofs",
                            help="root filesystem (default: rofs)")
        parser.add_argument("--disk-format", type=_disk_format, metavar="FORMAT",
                            help="qcow2 (default), raw, vmdk, vmdk-stream, vmdk-flat, "
                                 "vdi, vhd or vhdx")
        parser.add_argument("--no-base-files", dest="base_files", action="store_false",
                            help="do not add /etc/fstab, /etc/hosts, /dev, /proc, ...")
        parser.add_argument("--kernel-less", action="store_true",
                            help="OSv's kernel-less layout for direct kernel boot "
                                 "(microVMs): no loader, no command line (raw by default)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.images import ComposeOptions, compose_tree

        if parsed_args.fs == "zfs":
            raise UsageError("--fs zfs needs the ZFS builder VM, which this version "
                             "does not have yet; use --fs rofs")
        if parsed_args.name is None and parsed_args.output is None:
            raise UsageError("give an IMAGE_NAME or --output FILE")
        if parsed_args.name is not None and parsed_args.output is not None:
            raise UsageError("give an IMAGE_NAME or --output FILE, not both")
        result = compose_tree(
            app_config(self), Path(parsed_args.path), name=parsed_args.name,
            output=parsed_args.output, options=ComposeOptions(
                loader=parsed_args.loader, command_line=parsed_args.command_line,
                size=parsed_args.size, disk_format=parsed_args.disk_format,
                base_files=parsed_args.base_files, kernel_less=parsed_args.kernel_less))
        boot = ("Kernel-less: boot it with a kernel; the command line comes from the VMM"
                if parsed_args.kernel_less else f"Command line set to: '{result.cmdline}'")
        self.app.stdout.write(
            f"Composed {result.path} ({result.disk_format}, {result.virtual_size} bytes, "
            f"{result.files} files)\n{boot}\n")
        return 0


class ImageInfo(ShowOne):
    """Show an OSv image's format, command line, partition and filesystem"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        with _open_image(self, parsed_args.image) as img:
            return _show(img.summary())


class ImageLs(Lister):
    """List paths in an OSv image's filesystem"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("path", nargs="?", default="/", help="guest path (default /)")
        parser.add_argument("-R", "--recursive", action="store_true",
                            help="list everything below PATH")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Rows:
        with _open_image(self, parsed_args.image) as img:
            items = list(img.items(parsed_args.path))
        top = items[0]
        if not parsed_args.recursive and top.kind == "dir":
            depth = top.path.rstrip("/").count("/") + 1
            items = [i for i in items[1:] if i.path.count("/") == depth]
        return ("Path", "Type", "Size", "Target"), (
            (i.path, i.kind, i.size, i.target) for i in items)


class ImageCat(Command):
    """Write a file of an OSv image to standard output"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("path", help="guest path of the file")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        out: BinaryIO = self.app.stdout.buffer
        with _open_image(self, parsed_args.image) as img:
            for chunk in img.read(parsed_args.path):
                out.write(chunk)
        out.flush()
        return 0


class ImageTree(Command):
    """Print an OSv image's filesystem as a tree"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("path", nargs="?", default="/", help="guest path (default /)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        with _open_image(self, parsed_args.image) as img:
            items = list(img.items(parsed_args.path))
        for line in _tree_lines(items):
            self.app.stdout.write(line + "\n")
        return 0


def _tree_lines(items: list[TreeItem]) -> Iterator[str]:
    children: dict[str, list[TreeItem]] = {}
    for item in items[1:]:
        children.setdefault(item.path.rsplit("/", 1)[0] or "/", []).append(item)

    def render(path: str, prefix: str) -> Iterator[str]:
        kids = children.get(path, [])
        for n, kid in enumerate(kids):
            last = n == len(kids) - 1
            name = kid.path.rsplit("/", 1)[1] + (f" -> {kid.target}" if kid.target else "")
            yield f"{prefix}{'└── ' if last else '├── '}{name}"
            yield from render(kid.path, prefix + ("    " if last else "│   "))

    yield items[0].path
    yield from render(items[0].path, "")


class ImageDu(Lister):
    """Attribute an OSv image's file bytes to its directories"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("path", nargs="?", default="/", help="guest path (default /)")
        parser.add_argument("-d", "--max-depth", type=int, default=1,
                            help="show directories down to this depth (default 1)")
        parser.add_argument("-a", "--all", action="store_true", help="show files too")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Rows:
        with _open_image(self, parsed_args.image) as img:
            items = list(img.items(parsed_args.path))
        base = items[0].path.rstrip("/").count("/") if items[0].path != "/" else 0
        totals: dict[str, list[int]] = {}
        for item in items:
            path = item.path
            while True:
                row = totals.setdefault(path, [0, 0, 0])
                row[0] += item.size
                row[1] += -(-item.size // 512) * 512
                row[2] += item.kind == "file"
                if path == items[0].path:
                    break
                path = path.rsplit("/", 1)[0] or "/"
        kinds = {i.path: i.kind for i in items}
        rows = []
        for path, (size, blocks, files) in totals.items():
            depth = (path.count("/") if path != "/" else 0) - base
            if depth <= parsed_args.max_depth and (kinds[path] == "dir" or parsed_args.all):
                rows.append((path, size, blocks, files))
        rows.sort(key=lambda r: (-r[1], r[0]))
        return ("Path", "Bytes", "Allocated", "Files"), rows


class ImageDiff(Lister):
    """Show how two OSv images differ (command line, partition, files)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser, "image_a")
        _add_image(parser, "image_b")
        parser.add_argument("--exit-code", action="store_true",
                            help="exit with status 1 when the images differ")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Rows:
        from capstan.services.imagefile import diff

        changes = diff(app_config(self), parsed_args.image_a, parsed_args.image_b)
        self.differs = bool(changes)
        return ("Change", "Path", "Detail"), ((c.change, c.path, c.detail) for c in changes)

    def run(self, parsed_args: argparse.Namespace) -> int:
        code = int(super().run(parsed_args) or 0)
        return 1 if parsed_args.exit_code and self.differs else code


class ImageConvert(ShowOne):
    """Convert an OSv image to another disk format"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("output", type=Path, metavar="OUTPUT", help="file to write")
        parser.add_argument("--disk-format", type=_disk_format, required=True,
                            metavar="FORMAT", help="target format (see compose)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        from capstan.services.imagefile import convert

        return _show(convert(app_config(self), parsed_args.image, parsed_args.output,
                             parsed_args.disk_format))


class ImageExport(ShowOne):
    """Export an image for other hypervisors (ova: OVF + VMDK + manifest; gce: disk.raw tar)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("-o", "--output", type=Path, required=True, help="file to write")
        parser.add_argument("--disk-format", default="ova", choices=("ova", "gce"),
                            help="package format (ova; gce: the .tar.gz Compute Engine "
                                 "imports)")
        parser.add_argument("--name", help="VM name in the descriptor (default: the file's)")
        parser.add_argument("-m", "--memory", default="1G", help="memory of the VM (1G)")
        parser.add_argument("--cpus", type=int, default=2, help="vCPUs (2)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        from capstan.services.imagefile import OvaOptions, export

        a = parsed_args
        done = export(app_config(self), a.image, a.output, a.disk_format,
                      OvaOptions(name=a.name, memory=a.memory, cpus=a.cpus))
        return (("Path", "Capacity", "Members"),
                (str(done.path), done.capacity, " ".join(done.members)))


class ImageSbom(ShowOne):
    """Write a CycloneDX JSON SBOM of an image: its packages and every file, with SHA-256"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _add_image(parser)
        parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                            help="SBOM file to write (default: IMAGE_FILE.cdx.json here)")
        parser.add_argument("--lock", type=Path, metavar="CAPSTAN_LOCK",
                            help="take the packages from this capstan.lock (default: the "
                                 "image's record)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        from capstan.services.sbom import write_sbom

        return _show(write_sbom(app_config(self), parsed_args.image, parsed_args.output,
                                parsed_args.lock))
