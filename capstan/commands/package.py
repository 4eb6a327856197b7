"""``capstan package init|build|collect|compose|list|describe|delete`` and ``runtime``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne

from capstan.commands import app_config
from capstan.core.names import argument


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", "--package-dir", type=Path, default=Path("."), metavar="DIR",
                        help="package root (default: the current directory)")


class PackageInit(Command):
    """Create meta/package.yaml for a new package"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("path", nargs="?", type=Path, default=Path("."))
        parser.add_argument("-n", "--name", required=True, type=argument("package"))
        parser.add_argument("-t", "--title", required=True)
        parser.add_argument("-a", "--author", required=True)
        parser.add_argument("-v", "--version", dest="pkg_version", default="")
        parser.add_argument("--require", action="append", default=[], type=argument("package"))
        parser.add_argument("--runtime", help="also write meta/run.yaml for this runtime")
        parser.add_argument("-p", "--platform", default="")
        parser.add_argument("--force", action="store_true", help="overwrite existing files")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services import packages

        a = parsed_args
        manifest = packages.Manifest(a.name, a.title, a.author, a.pkg_version,
                                     tuple(a.require), platform=a.platform)
        path = packages.init(a.path, manifest, runtime=a.runtime, force=a.force)
        self.app.stdout.write(f"Initialized package {a.name} in {path.parent}\n")
        if a.runtime:
            self.app.stdout.write(f"Wrote {a.path / 'meta' / 'run.yaml'}\n")
        return 0


class RuntimeList(Lister):
    """List the runtimes meta/run.yaml can use"""

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import packages

        return (("Runtime", "Description", "Dependencies"),
                [(r.name, r.description, " ".join(r.depends)) for r in packages.runtimes()])


class RuntimeInit(Command):
    """Write a meta/run.yaml template for a runtime"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-r", "--runtime", required=True)
        parser.add_argument("--plain", action="store_true", help="without comments")
        parser.add_argument("-f", "--force", action="store_true", help="overwrite run.yaml")
        _dir(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services import packages

        a = parsed_args
        packages.write_run_template(a.package_dir, a.runtime, plain=a.plain, force=a.force)
        self.app.stdout.write("meta/run.yaml stub added to your package: customize it\n")
        return 0


class PackageBuild(ShowOne):
    """Build the package into NAME.mpm (reproducible)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _dir(parser)
        parser.add_argument("-o", "--output", type=Path, help="archive to write")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services import packages

        built = packages.build(parsed_args.package_dir, parsed_args.output)
        return ("Path", "Size", "SHA256"), (str(built.path), built.size, built.sha256)


class PackageImport(ShowOne):
    """Build the package and put it into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _dir(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services import packages

        built = packages.import_package(app_config(self), parsed_args.package_dir)
        return ("Name", "Path", "SHA256"), (built.name, str(built.path), built.sha256)


def _compose_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--require", action="append", default=[], type=argument("package"),
                        help="extra package (repeatable)")
    parser.add_argument("-p", "--pull-missing", action="store_true",
                        help="download missing packages from the remotes")
    _dir(parser)


class PackageCollect(Command):
    """Merge the package and its dependencies into ./mpm-pkg for inspection"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _compose_args(parser)
        parser.add_argument("--remote", action="store_true",
                            help="collect as a remote compose does: osv.compose-remote "
                                 "instead of osv.bootstrap")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services import packages

        config = app_config(self)
        pull = None
        if parsed_args.pull_missing:
            from capstan.services.repository import PullOptions, pull_package

            def pull(name: str) -> None:
                pull_package(config, name, PullOptions(s3=self.app.options.s3))

        done = packages.collect_here(config, parsed_args.package_dir, parsed_args.require,
                                     pull=pull, remote=parsed_args.remote)
        for path, earlier, later in done.collisions:
            self.app.stderr.write(f"capstan: {path} from {later} replaces {earlier}'s\n")
        self.app.stdout.write(f"Collected {len(done.packages)} packages into {done.tree}\n")
        return 0


class PackageCompose(ShowOne):
    """Compose the package and its dependencies into an image"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", nargs="?", metavar="IMAGE_NAME", type=argument("image"),
                            help="repository image name (or use -o FILE)")
        parser.add_argument("-o", "--output", type=Path, help="image file to write instead")
        parser.add_argument("-s", "--size", default="0", help="minimum virtual size, e.g. 1G")
        parser.add_argument("--fs", default="rofs", choices=("rofs", "zfs"))
        parser.add_argument("--boot", action="append", default=[],
                            help="config set to run (repeatable)")
        parser.add_argument("--run", "-e", dest="execute", help="command line, verbatim")
        parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--update", action="store_true",
                            help="ZFS: upload only what changed into the existing image "
                                 "(ROFS images are always rebuilt)")
        parser.add_argument("-l", "--loader-image", "--loader_image", dest="loader")
        parser.add_argument("--disk-format", dest="disk_format",
                            help="qcow2, raw, vmdk, vdi, vhd or vhdx")
        _compose_args(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.core.errors import UsageError
        from capstan.core.sizes import parse_size
        from capstan.services.images import PackageOptions, compose_package

        a = parsed_args
        if (a.name is None) == (a.output is None):
            raise UsageError("give an image name or -o FILE")
        fmt = None
        if a.disk_format:  # imagefile (image inspection, drivers) is for this only
            from capstan.services.imagefile import disk_format

            fmt = disk_format(a.disk_format)
        result, collected = compose_package(
            app_config(self), a.package_dir, name=a.name, output=a.output,
            options=PackageOptions(
                loader=a.loader, execute=a.execute, boots=tuple(a.boot), envs=tuple(a.env),
                size=parse_size(a.size) if a.size != "0" else 0, disk_format=fmt,
                fs=a.fs, require=tuple(a.require), pull_missing=a.pull_missing,
                s3=self.app.options.s3, update=a.update))
        return (("Image", "Packages", "Command line", "Collisions"),
                (str(result.path), " ".join(p.name for p in collected.packages),
                 result.cmdline, len(collected.collisions)))


class PackageList(Lister):
    """List the packages of the local repository"""

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services import packages

        rows, problems = packages.list_packages(app_config(self))
        for problem in problems:  # reported; the valid packages are still listed
            self.app.stderr.write(f"capstan: warning: skipping {problem}\n")
        return (("Name", "Description", "Version", "Created", "Platform", "Requires"),
                [(r.name, r.title, r.version, r.created, r.platform, " ".join(r.require))
                 for r in rows])


class PackageDescribe(ShowOne):
    """Show a package's metadata and boot commands"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("package", metavar="PACKAGE", help="name or .mpm file")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services import packages

        found = packages.describe(app_config(self), parsed_args.package)
        m = found.manifest
        return (("Name", "Title", "Author", "Version", "Requires", "Boot", "Files",
                 "PACKAGE DOCUMENTATION"),
                (m.name, m.title, m.author, m.version, " ".join(m.require), found.boots,
                 found.files, found.documentation))


class PackageDelete(Command):
    """Delete packages from the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("names", nargs="+", metavar="PACKAGE", type=argument("package"))
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.repository import remove_package

        for name in parsed_args.names:
            remove_package(app_config(self), name)
            self.app.stdout.write(f"Deleted package: {name}\n")
        return 0


class Init(Command):
    """Write a Capstanfile template in the current directory"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--force", action="store_true", help="overwrite a Capstanfile")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.capstanfile import init

        path = init(Path("."), parsed_args.force)
        self.app.stdout.write(f"Wrote {path}: edit base, cmdline, build and files\n")
        return 0


class Build(ShowOne):
    """Build the image the Capstanfile describes, into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", nargs="?", type=argument("image"),
                            help="image name (default: the directory's)")
        parser.add_argument("-o", "--output", type=Path, help="image file to write instead")
        parser.add_argument("-C", "--directory", type=Path, default=Path("."),
                            help="project directory (default: the current one)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.capstanfile import build

        result = build(app_config(self), parsed_args.directory, parsed_args.name,
                       parsed_args.output)
        return ("Image", "Command line"), (str(result.path), result.cmdline)
