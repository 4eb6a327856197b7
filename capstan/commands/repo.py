"""pull, images, rmi, search, package pull|search|push, base import, push, image upload."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne

from capstan.commands import app_config
from capstan.core.names import argument, check_name

_PULLED = ("Name", "Kind", "Status", "SHA256", "Source", "Path")


def _row(p: Any) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    return _PULLED, (p.name, p.kind, p.status, p.sha256, p.source, str(p.path))


def _quiet(args: argparse.Namespace) -> bool:
    return getattr(args, "formatter", "table") != "table"


def _insecure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure", action="store_true",
                        help="accept files whose remote publishes no SHA-256 digest "
                             "(recorded as unverified)")


class Pull(ShowOne):
    """Download an image or loader into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME", type=argument("image"),
                            help="loader (osv-loader) or bucket image (ns/name)")
        parser.add_argument("-p", "--platform", default="qemu",
                            help="image flavour (qemu; kernel: OSv's kernel ELF, for run "
                                 "--kernel NAME)")
        parser.add_argument("--force", action="store_true", help="download again")
        _insecure(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.repository import PullOptions, pull_image

        return _row(pull_image(app_config(self), parsed_args.name, parsed_args.platform,
                               PullOptions(s3=self.app.options.s3, force=parsed_args.force,
                                           quiet=_quiet(parsed_args),
                                           insecure=parsed_args.insecure)))


class PackagePull(ShowOne):
    """Download a package (.yaml and .mpm) into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="PACKAGE", type=argument("package"))
        parser.add_argument("--force", action="store_true", help="download again")
        _insecure(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.repository import PullOptions, pull_package

        return _row(pull_package(app_config(self), parsed_args.name, PullOptions(
            s3=self.app.options.s3, force=parsed_args.force, quiet=_quiet(parsed_args),
            insecure=parsed_args.insecure)))


class PackageUpdate(Lister):
    """Pull the local packages whose remote version is newer (Capstan's rules)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("pattern", nargs="?", default="", metavar="NAME",
                            help="only packages whose name contains NAME")
        parser.add_argument("--created", action="store_true",
                            help="also update when the remote package was created later")
        _insecure(parser)
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.updates import UpdateOptions, update_packages

        a = parsed_args
        rows = update_packages(app_config(self), UpdateOptions(
            a.pattern, a.created, self.app.options.s3, a.insecure))
        updated = sum(r.status.startswith("updated") for r in rows)
        self.app.stderr.write(f"Updated {updated} packages (out of {len(rows)} that were "
                              "found locally)\n")
        return (("Name", "Local version", "Remote version", "Status"),
                [(r.name, r.local, r.remote, r.status) for r in rows])


def _cloud(command: Command, name: str | None) -> Any:
    """The image store of driver *name* when given, else None (the local repository)."""
    if name is None:
        return None
    from capstan.services.repository import image_store

    return image_store(app_config(command), name)


class Images(Lister):
    """List the images of the local repository (or, with -p aws, our AMIs)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-p", "--hypervisor", metavar="DRIVER",
                            help="list a cloud driver's images instead (aws)")
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.repository import list_images

        cloud = _cloud(self, parsed_args.hypervisor)
        if cloud is not None:
            return (("Name", "ID", "Snapshot", "SHA256", "Created"),
                    [(i.name, i.id, i.detail, i.digest, i.created) for i in cloud.images()])
        return (("Name", "Description", "Version", "Created", "Platform", "Hypervisor", "Size",
                 "SHA256", "Source"),
                [(r.name, r.description, r.version, r.created, r.platform, r.hypervisor,
                  r.size, r.sha256, r.source) for r in list_images(app_config(self))])


class ImageUpload(ShowOne):
    """Upload an image to a cloud as a machine image (-p aws: an AMI)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="IMAGE", help="repository name or file")
        parser.add_argument("--name", help="name to tag it with (default: the image's)")
        parser.add_argument("-p", "--hypervisor", metavar="DRIVER", default="aws")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.store import LocalRepository

        cloud = _cloud(self, parsed_args.hypervisor)
        image = LocalRepository(app_config(self).root).resolve(parsed_args.image)
        name = parsed_args.name or image.stem
        start = time.monotonic()
        done = cloud.upload(image, name)
        return (("Name", "ID", "SHA256", "Reused", "Bytes sent", "Seconds"),
                (done.name, done.id, done.digest, done.reused, done.bytes_sent,
                 round(time.monotonic() - start, 2)))


class Rmi(Command):
    """Delete images from the local repository (or, with -p aws, AMIs and snapshots)"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("names", nargs="+", metavar="NAME", type=argument("image"))
        parser.add_argument("-p", "--hypervisor", metavar="DRIVER",
                            help="delete a cloud driver's image instead (aws)")
        parser.add_argument("--force", action="store_true",
                            help="delete an image even if instances are created on it")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.repository import remove_image

        cloud = _cloud(self, parsed_args.hypervisor)
        for name in parsed_args.names:
            if cloud is not None:
                cloud.remove_image(name)
            else:
                broken = remove_image(app_config(self), name, force=parsed_args.force)
                if broken:
                    self.app.stderr.write(f"capstan: warning: instances {', '.join(broken)} "
                                          f"can no longer start (their image {name} is "
                                          "gone): delete them\n")
            self.app.stdout.write(f"Deleted image: {name}\n")
        return 0


class _Search(Lister):
    kind: str | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("pattern", nargs="?", default="*",
                            help="substring or glob (default: everything)")
        return parser

    def take_action(
        self, parsed_args: argparse.Namespace
    ) -> tuple[tuple[str, ...], Iterable[tuple[Any, ...]]]:
        from capstan.services.repository import search

        return (("Kind", "Name", "Repository"),
                search(app_config(self), parsed_args.pattern, self.kind, self.app.options.s3))


class Search(_Search):
    """Search the remote repositories for images and packages"""


class PackageSearch(_Search):
    """Search the remote repositories for packages"""

    kind = "package"


class BaseImport(ShowOne):
    """Import your own loader, base image or kernel (--kernel) into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("file", type=Path, metavar="FILE")
        parser.add_argument("--name", required=True, type=argument("image"),
                            help="repository name, e.g. my/loader")
        parser.add_argument("--description", default="")
        parser.add_argument("--version", dest="image_version", default="")
        parser.add_argument("--kernel", action="store_true",
                            help="FILE is OSv's kernel ELF (loader-stripped.elf), for "
                                 "run --kernel NAME")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.kernels import import_kernel
        from capstan.services.repository import import_base

        args = parsed_args
        how = import_kernel if args.kernel else import_base
        return _row(how(app_config(self), args.file, args.name, args.description,
                        args.image_version))


class Import(Command):
    """Import an image file (qcow2, raw, VDI or VMDK) into the local repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="IMAGE_NAME", type=argument("image"))
        parser.add_argument("file", metavar="IMAGE_FILE", type=Path)
        parser.add_argument("-v", "--version", dest="image_version", default="",
                            help="version recorded in index.yaml")
        parser.add_argument("-c", "--created", default="",
                            help="creation time (RFC 3339 or YYYY-MM-DD HH:MM; default: now)")
        parser.add_argument("-d", "--description", default="")
        parser.add_argument("-b", "--build", default="", help="how the image was built")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        from capstan.services.imagedir import ImportMeta, import_image

        a = parsed_args
        self.app.stdout.write(f"Importing {a.name}...\n")
        done = import_image(app_config(self).root, a.name, a.file,
                            ImportMeta(a.image_version, a.created, a.description, a.build))
        self.app.stdout.write(f"Importing into {done.path} ({done.format}, sha256 "
                              f"{done.sha256})\n")
        return 0


class Push(ShowOne):
    """Publish an image to an S3 bucket or directory repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="NAME", type=argument("image"),
                            help="image (ns/name)")
        parser.add_argument("url", metavar="REPOSITORY", help="s3://bucket/prefix or a directory")
        parser.add_argument("-p", "--platform", default="qemu")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.repository import push_image

        return _row(push_image(app_config(self), parsed_args.name, parsed_args.url,
                               parsed_args.platform))


class PackagePush(ShowOne):
    """Publish a package to an S3 bucket or directory repository"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("package", metavar="PACKAGE", help="package name or .mpm file")
        parser.add_argument("url", metavar="REPOSITORY", help="s3://bucket/prefix or a directory")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        from capstan.services.repository import push_package

        if not parsed_args.package.endswith(".mpm"):
            check_name(parsed_args.package, "package")
        return _row(push_package(app_config(self), parsed_args.package, parsed_args.url))
