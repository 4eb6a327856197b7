"""Image services behind ``capstan compose`` and ``capstan image ...``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capstan.core.config import Config
from capstan.core.errors import InputError, LocalIOError, UsageError
from capstan.image import cmdline, compose, tree
from capstan.image.formats import DiskFormat
from capstan.image.loader import read_loader
from capstan.image.rofs import Entry
from capstan.services.store import LocalRepository

if TYPE_CHECKING:
    from capstan.packages.resolve import Merged, Resolved
    from capstan.packages.runtimes import RunConfig
    from capstan.services.zfs import ZfsSpec

__all__ = ["PLATFORM_OF", "ComposeOptions", "PackageOptions", "compose_entries",
           "compose_package", "compose_tree", "package_cmdline"]

LOG = logging.getLogger(__name__)

PLATFORM_OF = {
    DiskFormat.QCOW2: "qemu", DiskFormat.RAW: "qemu", DiskFormat.VDI: "vbox",
    DiskFormat.VMDK: "vmw", DiskFormat.VMDK_STREAM: "vmw", DiskFormat.VMDK_FLAT: "vmw",
    DiskFormat.VHD: "vhd", DiskFormat.VHDX: "vhdx", DiskFormat.GCE: "gce",
}
DEFAULT_BOOT = "runscript /run/default;"


@dataclass(frozen=True)
class ComposeOptions:
    """How to compose an image: *loader*, *disk_format* (None: the configured ones),
    *command_line* (None: run ``/run/default``), minimum *size* (0: just enough),
    *base_files* (add ``/etc/fstab``, ``/dev``, ...) and *kernel_less*: OSv's kernel-less
    layout, for direct kernel boot (microVMs), with no loader and no command line (the
    VMM gives both), raw unless *disk_format* says qcow2."""

    loader: str | None = None
    command_line: str | None = None
    size: int = 0
    disk_format: DiskFormat | None = None
    base_files: bool = True
    kernel_less: bool = False


def compose_tree(config: Config, source: Path, *, name: str | None = None,
                 output: Path | None = None, options: ComposeOptions = ComposeOptions()
                 ) -> compose.ComposeResult:
    """Compose the tree (or file) *source* into image *name* or file *output*."""
    return compose_entries(config, tree.collect(source), name=name, output=output,
                           options=options)


def compose_entries(config: Config, entries: Sequence[Entry], *, name: str | None = None,
                    output: Path | None = None, options: ComposeOptions = ComposeOptions()
                    ) -> compose.ComposeResult:
    """Compose *entries* (an in-memory tree) into image *name* or file *output*."""
    if (name is None) == (output is None):
        raise UsageError("give either an image name or --output FILE")
    repo = LocalRepository(config.root)
    if options.kernel_less:
        disk = _kernel_less_disk(options)
        if options.base_files:
            entries = tree.with_base(entries)
        return _write(repo, entries, disk, name=name, output=output)
    fmt = options.disk_format or DiskFormat.parse(config.disk_format)
    ld = read_loader(repo.resolve(options.loader or config.loader, kind="loader"))
    if options.base_files:
        entries = tree.with_base(entries)
    command_line = options.command_line
    if command_line is None:
        if not any(e.path == "/run/default" for e in entries):
            raise UsageError("no command line: pass -c/--command_line, or put a "
                             "/run/default script in the tree")
        command_line = DEFAULT_BOOT
    text = cmdline.with_rootfs(command_line, "rofs")
    cmdline.validate(text)
    return _write(repo, entries, compose.DiskSpec(ld, text, fmt, options.size), name=name,
                  output=output)


def _kernel_less_disk(options: ComposeOptions) -> compose.DiskSpec:
    """The disk of a kernel-less compose, once *options* are checked for one."""
    if options.loader is not None:
        raise UsageError("a kernel-less image has no loader: drop -l/--loader-image")
    if options.command_line is not None:
        raise UsageError("a kernel-less image holds no command line: give it to the VMM "
                         "at run time (capstan run --kernel K -e CMDLINE)")
    fmt = options.disk_format or DiskFormat.RAW
    if fmt not in (DiskFormat.RAW, DiskFormat.QCOW2):
        raise UsageError(f"a kernel-less image is for direct kernel boot (QEMU microvm, "
                         f"Firecracker, Cloud Hypervisor): raw or qcow2, not {fmt.label}")
    return compose.DiskSpec(None, "", fmt, options.size)


def _write(repo: LocalRepository, entries: Sequence[Entry], disk: compose.DiskSpec, *,
           name: str | None, output: Path | None) -> compose.ComposeResult:
    """Compose to *output*, or as image *name* of *repo* (locked, then indexed)."""
    if output is not None:  # with the root: recomposed in place of the previous image
        return compose.compose(entries, disk, output, repo.root)
    assert name is not None
    target = repo.image_file(name, PLATFORM_OF[disk.disk_format])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LocalIOError(f"cannot create {target.parent}: {err.strerror}") from err
    with repo.lock(name):
        result = compose.compose(entries, disk, target, repo.root)
        repo.write_index(name, image=target)
    return result


def package_cmdline(run: RunConfig | None, execute: str | None, boots: Sequence[str],
                    envs: Sequence[str]) -> str:
    """The image command line of a package compose (reference 6.7, fixed).

    ``--run`` verbatim, else ``--boot`` names, else ``config_set_default`` (or the
    only config set), else ``runscript /run/default;``; then ``--env`` as hard
    tokens in front.
    """
    if execute:
        text = execute
    else:
        names = [b.strip() for b in boots if b.strip()] or list(
            run.default_boot() if run else ())
        text = "".join(f"runscript /run/{n};" for n in names) or DEFAULT_BOOT
    if not envs:  # instances (the drivers' side) is for --env only
        return text
    from capstan.services.instances import env_token

    return " ".join([*(env_token(e) for e in envs), text])


@dataclass(frozen=True)
class PackageOptions:
    """How to compose a package: the *loader*, the boot (*execute* verbatim, else the
    *boots* config sets, with *envs* in front), *size* and *disk_format* as for
    :class:`ComposeOptions`, the filesystem *fs* (``rofs`` or ``zfs``), *require*d extra
    packages, *pull_missing* ones (from S3 when *s3*), and *update*: ZFS images only,
    upload just what changed (ROFS images are always rebuilt, which takes less time than
    booting a VM)."""

    loader: str | None = None
    execute: str | None = None
    boots: tuple[str, ...] = ()
    envs: tuple[str, ...] = ()
    size: int = 0
    disk_format: DiskFormat | None = None
    fs: str = "rofs"
    require: tuple[str, ...] = ()
    pull_missing: bool = False
    s3: bool = False
    update: bool = False


def compose_package(config: Config, package: Path, *, name: str | None = None,
                    output: Path | None = None, options: PackageOptions = PackageOptions()
                    ) -> tuple[compose.ComposeResult, Merged]:
    """Merge *package* with its dependencies in memory and compose the merged tree."""
    from capstan.packages.manifest import load_run, manifest_or_default
    from capstan.packages.resolve import MergeOptions, merge

    manifest = manifest_or_default(package)
    run = load_run(package, manifest.name)
    text = package_cmdline(run, options.execute, options.boots, options.envs)
    pins: list[bytes | None] = []  # capstan.lock's new text, written once the image is
    merged = merge(package, config.root, MergeOptions(
        extra=options.require, pull=_puller(config, options),
        check=lambda resolved: pins.append(_check_lock(package, resolved))))
    for path, earlier, later in merged.collisions:
        LOG.warning("%s from %s replaces the one from %s", path, later, earlier)
    entries = merged.tree.entries()
    if options.fs == "zfs":
        from capstan.services.zfs import ZfsSpec

        target = output or LocalRepository(config.root).image_file(str(name), "qemu")
        result = _compose_zfs(config, entries, target, ZfsSpec(
            options.loader or "osv-loader-with-zfs", text, options.size, options.disk_format,
            update=options.update))
    else:
        result = compose_entries(config, entries, name=name, output=output, options=(
            ComposeOptions(loader=options.loader, command_line=text, size=options.size,
                           disk_format=options.disk_format)))
    if pins and pins[-1] is not None:
        from capstan.core.fs import atomic_write

        atomic_write(package / "capstan.lock", pins[-1])
    if name is not None:  # the record `image sbom` reads: which packages, which digests
        repo = LocalRepository(config.root)
        with repo.lock(name):
            repo.write_index(name, image=result.path, packages=[
                {"name": p.name, "version": p.version, "sha256": p.sha256}
                for p in merged.packages])
    return result, merged


def _puller(config: Config, options: PackageOptions) -> Callable[[str], None] | None:
    """What pulls a missing package, when *options* ask for it."""
    if not options.pull_missing:
        return None
    from capstan.services.repository import PullOptions, pull_package

    def pull(pkg: str) -> None:
        pull_package(config, pkg, PullOptions(s3=options.s3, quiet=True))

    return pull


def _compose_zfs(config: Config, entries: Sequence[Entry], target: Path,
                 spec: ZfsSpec) -> compose.ComposeResult:
    from capstan.image.inspect import OsvImage
    from capstan.services.zfs import compose_zfs

    target.parent.mkdir(parents=True, exist_ok=True)
    uploaded = compose_zfs(config, entries, spec, target)
    LOG.info("uploaded %d of %d entries into %s", uploaded, len(entries), target)
    with OsvImage(target) as img:
        part = img.partition
        info = img.summary()
    return compose.ComposeResult(
        path=target, disk_format=info.format, virtual_size=info.virtual_size,
        partition_start=part.start if part else 0, partition_size=part.size if part else 0,
        cmdline=img.cmdline, loader=spec.loader, files=len(entries),
        directories=0, symlinks=0, file_bytes=0)


def _check_lock(package: Path, resolved: Sequence[Resolved]) -> bytes | None:
    """Refuse a resolved package that ``capstan.lock`` pins at another digest; the
    lock file's new text, pinning every resolved package (JSON, which is YAML), or None
    when it holds that text already."""
    from capstan.core.yamlfile import load_text, read_bounded

    lock = package / "capstan.lock"
    now = {p.name: {"version": p.version, "sha256": p.sha256} for p in resolved}
    text = (json.dumps({"lock_version": 1, "packages": now}, indent=2, sort_keys=True)
            + "\n").encode()
    if not lock.is_file():
        return text
    held = read_bounded(lock, InputError)
    if held == text:
        return None
    pinned = load_text(held, str(lock), strict=True) or {}
    if not isinstance(pinned, dict) or not isinstance(pinned.get("packages") or {}, dict):
        raise InputError(f"{lock}: malformed lock file: expected lock_version and packages")
    for pkg, entry in (pinned.get("packages") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        have = now.get(pkg)
        if have and have["sha256"] != entry.get("sha256"):
            raise InputError(f"{lock} pins {pkg} at sha256 {entry.get('sha256')} but the "
                             f"repository has {have['sha256']}: pull the pinned package, "
                             "or delete capstan.lock to accept the new one")
    return text
