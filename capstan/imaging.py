"""Image services behind ``capstan compose`` and ``capstan image ...``."""

from __future__ import annotations

from pathlib import Path

from capstan.config import Config
from capstan.errors import LocalIOError, UsageError
from capstan.image import cmdline, compose, tree
from capstan.image.formats import DiskFormat
from capstan.image.loader import read_loader
from capstan.repository import LocalRepository

__all__ = ["PLATFORM_OF", "compose_tree"]

PLATFORM_OF = {
    DiskFormat.QCOW2: "qemu", DiskFormat.RAW: "qemu", DiskFormat.VDI: "vbox",
    DiskFormat.VMDK: "vmw", DiskFormat.VMDK_STREAM: "vmw", DiskFormat.VMDK_FLAT: "vmw",
    DiskFormat.VHD: "vhd", DiskFormat.VHDX: "vhdx",
}
DEFAULT_BOOT = "runscript /run/default;"


def compose_tree(
    config: Config,
    source: Path,
    *,
    name: str | None = None,
    output: Path | None = None,
    loader: str | None = None,
    command_line: str | None = None,
    size: int = 0,
    disk_format: DiskFormat | None = None,
    base_files: bool = True,
) -> compose.ComposeResult:
    """Compose the tree (or file) *source* into image *name* or file *output*."""
    if (name is None) == (output is None):
        raise UsageError("give either an image name or --output FILE")
    fmt = disk_format or DiskFormat.parse(config.disk_format)
    repo = LocalRepository(config.root)
    ld = read_loader(repo.resolve(loader or config.loader, kind="loader"))
    entries = tree.collect(source)
    if base_files:
        entries = tree.with_base(entries)
    if command_line is None:
        if not any(e.path == "/run/default" for e in entries):
            raise UsageError("no command line: pass -c/--command_line, or put a "
                             "/run/default script in the tree")
        command_line = DEFAULT_BOOT
    text = cmdline.with_rootfs(command_line, "rofs")
    cmdline.validate(text)
    if output is not None:
        return compose.compose(entries, ld, output, text, fmt, size)
    assert name is not None
    target = repo.image_file(name, PLATFORM_OF[fmt])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LocalIOError(f"cannot create {target.parent}: {err.strerror}") from err
    with repo.lock(name):
        result = compose.compose(entries, ld, target, text, fmt, size)
        repo.write_index(name)
    return result
