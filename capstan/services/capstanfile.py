"""Capstanfile mode: ``capstan init`` and ``capstan build`` (reference 6.1, 11.7).

Capstan boots its base image in a VM and uploads the files over cpio; pycapstan
builds the same image on the host: the base's own files (when the base is a
composed image) and the Capstanfile's ``rootfs`` and ``files`` are merged in an
in-memory tree (nothing is copied) and composed onto the base's loader with a ROFS.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import CommandFailed, ImageError, InputError, NotFound, UsageError
from capstan.core.yamlfile import load_strict
from capstan.image.tree import Tree, collect, guest_path

__all__ = ["Capstanfile", "build", "init", "load"]

TEMPLATE = """\
# Capstanfile: how 'capstan build' makes this project's image.
# The base: a loader or a composed image (repository name or file).
base: osv-loader
# The OSv command line.
cmdline: /hello
# A host command run first (through sh -c), e.g. make.
# build: make
# Guest path: host path ('&' stands for the guest path's file name; quote it).
files:
  /hello: "&"
"""


@dataclass(frozen=True)
class Capstanfile:
    """A parsed Capstanfile."""

    path: Path
    base: str
    cmdline: str
    build: str = ""
    files: dict[str, str] = field(default_factory=dict)
    rootfs: str | None = None


def load(path: Path) -> Capstanfile:
    """Read and check *path*: unknown keys, wrong types and missing files are errors."""
    data: Any = load_strict(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping (base, cmdline, build, files, rootfs)")
    if "rpm-base" in data:
        raise InputError(f"{path}: rpm-base is obsolete (Fedora's Koji paths are gone): put "
                         "the files under rootfs instead")
    unknown = sorted(set(map(str, data)) - {"base", "cmdline", "build", "files", "rootfs"})
    if unknown:
        raise InputError(f"{path}: unknown key '{unknown[0]}'")
    if not isinstance(data.get("cmdline"), str) or not data["cmdline"].strip():
        raise InputError(f"{path}: 'cmdline' is required")
    files = data.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise InputError(f"{path}: 'files' must map guest paths to host paths")
    for key in ("base", "build", "rootfs"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise InputError(f"{path}: '{key}' must be a string")
    return Capstanfile(path, str(data.get("base") or "osv-loader"), data["cmdline"].strip(),
                       str(data.get("build") or ""), dict(files), data.get("rootfs"))


def init(directory: Path, force: bool = False) -> Path:
    """Write a commented Capstanfile template."""
    path = directory / "Capstanfile"
    if path.exists() and not force:
        raise InputError(f"{path} exists: use --force to overwrite it")
    path.write_text(TEMPLATE)
    return path


def _run_build(spec: Capstanfile, project: Path) -> None:
    """Run the Capstanfile's ``build:`` command in *project* (CommandFailed on failure)."""
    done = subprocess.run(["sh", "-c", spec.build], cwd=project, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()
        raise CommandFailed(["sh", "-c", spec.build], done.returncode,
                            tail[-1] if tail else "")


def _add_project_files(files: Tree, spec: Capstanfile, project: Path) -> None:
    """Add the project's rootfs directory, then its ``files:``, to *files*."""
    rootfs = project / (spec.rootfs or "ROOTFS")
    if spec.rootfs and not rootfs.is_dir():
        raise NotFound(f"{spec.path}: rootfs: {rootfs} does not exist")
    if rootfs.is_dir():
        for entry in collect(rootfs):
            files.add(entry, f"{spec.path}: rootfs")
    for guest, host in spec.files.items():
        if not guest.startswith("/"):
            raise UsageError(f"{spec.path}: files: '{guest}' must be an absolute guest path")
        where = f"{spec.path}: files: {guest}"
        guest = guest_path(guest.rstrip("/") or "/", where)
        source = project / host.replace("&", guest.rsplit("/", 1)[-1])
        if not source.exists():
            raise NotFound(f"{spec.path}: files: {source}: no such file or directory")
        for entry in collect(source if source.is_dir() else source.resolve(), guest):
            files.add(entry, where)


def build(config: Config, project: Path, name: str | None = None,
          output: Path | None = None) -> Any:
    """Run the build command and compose the image into the repository (or *output*)."""
    from capstan.image.inspect import OsvImage
    from capstan.services.images import ComposeOptions, compose_entries
    from capstan.services.store import LocalRepository

    if name is None and output is None and not (project / "Capstanfile").exists():
        raise UsageError("usage: capstan build [image-name] (no Capstanfile in "
                         f"{project.absolute()})")
    spec = load(project / "Capstanfile")
    if spec.build:
        _run_build(spec, project)
    base = LocalRepository(config.root).resolve(spec.base, kind="loader")
    files = Tree()
    with contextlib.ExitStack() as stack:
        try:
            img = stack.enter_context(OsvImage(base))
            inherited = img.entries() if img.partition is not None else []
        except ImageError:
            inherited = []  # a bare loader: nothing to inherit
        for entry in inherited:
            files.add(entry, f"{base}")
        _add_project_files(files, spec, project)
        image_name = None if output else (name or project.absolute().name)
        return compose_entries(config, files.entries(), name=image_name, output=output,
                               options=ComposeOptions(loader=str(base),
                                                      command_line=spec.cmdline))
