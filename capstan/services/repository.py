"""Services behind pull, images, rmi, search, base import and push."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from filelock import FileLock

from capstan.core import timestamps
from capstan.core.config import Config
from capstan.core.errors import Conflict, ImageError, InputError, LocalIOError, NotFound
from capstan.core.fs import (
    atomic_output,
    atomic_write,
    lock,
    open_regular,
    sha256_of,
    sweep,
    temp_path,
    write_error,
)
from capstan.core.names import check_name, is_valid
from capstan.core.yamlfile import load_cached, load_file
from capstan.drivers.base import ImageStore
from capstan.image.kernel import read_kernel
from capstan.remotes.catalog import BucketRemote, Found, Remote, remotes
from capstan.remotes.download import Artifact, fetch
from capstan.services.disks import open_driver
from capstan.services.imagedir import check_standalone, publish_image
from capstan.services.store import KERNEL_ENTRY, LocalRepository

__all__ = ["KERNEL", "FileImport", "ImageRow", "PullOptions", "Pulled", "image_store",
           "import_base", "import_file", "list_images", "pull_image", "pull_package", "push_image",
           "push_package", "remove_image", "remove_package", "search"]

#: the platform of a kernel in the repository (``NAME/NAME.kernel``)
KERNEL = "kernel"

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pulled:
    """An artefact now in the local repository."""

    name: str
    kind: str
    path: Path
    sha256: str
    source: str
    status: str  # downloaded, present, imported, pushed


@dataclass(frozen=True)
class ImageRow:
    """One image of the local repository: Capstan's columns (from ``index.yaml``,
    ``N/A`` for a missing time or platform), then ours."""

    name: str
    description: str
    version: str
    created: str  # as Capstan shows it: YYYY-MM-DD HH:MM or N/A
    platform: str  # index.yaml's platform (the OS it was built for), or N/A
    hypervisor: str  # the file suffix: qemu, vbox, vmw, ...
    size: int
    sha256: str
    source: str


def _verified(hit: Found, what: str, insecure: bool) -> bool:
    """Whether the remote publishes a digest for every file of *hit*; without one the
    download is refused (InputError) unless *insecure*."""
    missing = [a.name for a in hit.files if not a.sha256]
    if missing and not insecure:
        raise InputError(f"{what}: {hit.source} publishes no SHA-256 digest for "
                         f"{', '.join(missing)}; refusing an unverified download "
                         "(--insecure accepts it)")
    return not missing


@dataclass(frozen=True)
class PullOptions:
    """How to pull: also from the S3 repository (*s3*), again even when present
    (*force*), without a progress bar (*quiet*), and accepting a remote that publishes
    no digest (*insecure*)."""

    s3: bool = False
    force: bool = False
    quiet: bool = False
    insecure: bool = False


def _first_hit(config: Config, s3: bool, find: Callable[[Remote], Found | None],
               what: str) -> Found:
    """The first configured remote's answer to *find*; NotFound naming *what*."""
    sources = remotes(config, s3)
    for remote in sources:
        hit = find(remote)
        if hit:
            return hit
    raise NotFound(f"{what} is not available in {', '.join(r.label for r in sources)}")


def pull_image(config: Config, name: str, platform: str = "qemu",
               options: PullOptions = PullOptions()) -> Pulled:
    """Download image or loader *name* into the repository (a no-op when present).

    Every file must come with a published digest unless *insecure* (then the
    image is recorded ``verified: false``). Under the image's lock, so concurrent
    pulls download once and all report the recorded digest. The image and its
    ``index.yaml`` are staged in a new directory that replaces the old one in one
    step, once the download is verified."""
    repo = LocalRepository(config.root)
    target = repo.image_file(name, platform)
    with repo.lock(name):
        if target.is_file() and not options.force:
            return Pulled(name, "image", target,
                          _recorded(repo, name, platform) or sha256_of(target), "local",
                          "present")
        hit = _first_hit(config, options.s3, lambda r: r.image(name, platform),
                         f"image {name}")
        verified = _verified(hit, f"image {name}", options.insecure)
        image, *index = hit.files
        repo.images.mkdir(parents=True, exist_ok=True)
        sweep(repo.images)
        work = repo.images / ".downloads" / name.replace("/", "%")  # ours under the lock
        downloaded = work / target.name
        digest = fetch(image, downloaded, quiet=options.quiet, unpack=True)
        _check_download(downloaded, name, platform)
        meta: dict[str, object] = {"format_version": "1", "version": "", "description": "",
                                   "build": "", "created": timestamps.now()}
        if index:
            meta.update(_remote_meta(index[0], work / "index.remote.yaml", meta))
        meta.update({"sha256": digest, "source": hit.source, "verified": verified})
        publish_image(repo, name, {target.name: downloaded}, meta, kernel=platform == KERNEL)
        shutil.rmtree(work, ignore_errors=True)
    return Pulled(name, "image", target, digest, hit.source, _status(verified))


def _remote_meta(index: Artifact, path: Path, known: dict[str, object]) -> dict[str, str]:
    """The fields of the remote ``index.yaml`` *index* (fetched to *path*, then removed)
    that a pulled image's own index records: the *known* keys and ``platform``."""
    fetch(index, path, quiet=True)
    try:
        remote_meta = load_file(path, index.url) or {}
    except InputError as err:
        raise InputError(f"malformed index.yaml: {err}") from err
    finally:
        path.unlink(missing_ok=True)
    if not isinstance(remote_meta, dict):
        return {}
    return {k: str(v) for k, v in remote_meta.items() if k in known or k == "platform"}


def _check_download(path: Path, name: str, platform: str) -> None:
    """A pulled kernel must be a PVH kernel ELF; an image, a disk that reads no other file."""
    if platform == KERNEL:
        read_kernel(path)
    else:
        check_standalone(path, f"image {name}")


def _status(verified: bool) -> str:
    return "downloaded" if verified else "downloaded (unverified)"


def _recorded(repo: LocalRepository, name: str, platform: str) -> str:
    meta = load_cached(repo.image_dir(name) / "index.yaml", f"index of image {name}")
    if platform == KERNEL:
        entry = meta.get(KERNEL_ENTRY)
        meta = entry if isinstance(entry, dict) else {}
    return str(meta.get("sha256", ""))


def pull_package(config: Config, name: str, options: PullOptions = PullOptions()) -> Pulled:
    """Download package *name* (``.yaml`` and ``.mpm``) into ``<root>/packages``.

    Both files must come with a published digest unless *insecure* (then the
    recorded digest is marked ``unverified``). Under the package's lock:
    concurrent pulls download once. Each file is replaced only by its verified
    download, the manifest last."""
    packages = config.root / "packages"
    manifest, archive, stamp = _package_files(packages, name)
    packages.mkdir(parents=True, exist_ok=True)
    with _package_lock(config, name):
        if manifest.is_file() and archive.is_file() and not options.force:
            digest = stamp.read_text().split()[0] if stamp.is_file() else sha256_of(archive)
            return Pulled(name, "package", archive, digest, "local", "present")
        hit = _first_hit(config, options.s3, lambda r: r.package(name), f"package {name}")
        verified = _verified(hit, f"package {name}", options.insecure)
        yaml_art, mpm_art = hit.files
        sweep(packages)
        new_manifest = temp_path(manifest)
        try:
            fetch(yaml_art, new_manifest, quiet=True)
            digest = fetch(mpm_art, archive, quiet=options.quiet)
            atomic_write(stamp, f"{digest}{'' if verified else ' unverified'}\n".encode())
            os.replace(new_manifest, manifest)  # last: a package "exists" once this does
        except OSError as err:
            raise write_error(manifest, err) from err
        finally:
            new_manifest.unlink(missing_ok=True)
    return Pulled(name, "package", archive, digest, hit.source, _status(verified))


def remove_package(config: Config, name: str) -> None:
    """Delete package *name* (manifest, archive and digest) from the repository."""
    packages = config.root / "packages"
    files = _package_files(packages, name)
    if not any(f.exists() for f in files):
        raise NotFound(f"no package {name} in {packages}")
    with _package_lock(config, name):
        for f in files:  # the manifest first: a package "exists" while both do
            f.unlink(missing_ok=True)


def _package_files(packages: Path, name: str) -> tuple[Path, Path, Path]:
    """Manifest, archive and recorded digest of package *name*."""
    check_name(name, "package", "")
    return (packages / f"{name}.yaml", packages / f"{name}.mpm",
            packages / f"{name}.mpm.sha256")


def _package_lock(config: Config, name: str) -> FileLock:
    """The lock serialising writers of package *name*."""
    return lock(config.root, "package", name)


def list_images(config: Config) -> list[ImageRow]:
    """Every image in the repository, Capstan's namespaces included."""
    repo = LocalRepository(config.root)
    rows: list[ImageRow] = []
    if not repo.images.is_dir():
        return rows
    for index in sorted(repo.images.rglob("*")):
        hidden = any(p.startswith(".") for p in index.relative_to(repo.images).parts)
        if hidden or not index.is_file() or index.suffix not in (
                ".qemu", ".vbox", ".vmw", ".vhd", ".vhdx", ".gce", ".vmware", ".raw"):
            continue
        name = index.parent.relative_to(repo.images).as_posix()
        if index.stem != name.rsplit("/", 1)[-1]:
            continue
        if not is_valid(name, "image"):
            LOG.warning("skipping %s: not a valid image name", ascii(name))
            continue
        meta = load_cached(index.parent / "index.yaml", f"index of image {name}")
        rows.append(ImageRow(
            name, _text(meta, "description"), _text(meta, "version"),
            timestamps.show(meta.get("created")),
            _text(meta, "platform") or timestamps.NOT_AVAILABLE, index.suffix[1:],
            index.stat().st_size, _text(meta, "sha256"), _text(meta, "source")))
    return rows


def _text(meta: dict[str, object], key: str) -> str:
    value = meta.get(key)
    return "" if value is None or isinstance(value, dict | list) else str(value)


def remove_image(config: Config, name: str, *, force: bool = False) -> list[str]:
    """Delete image *name* (every platform) from the repository.

    An image that instances are created on is refused unless *force*; the
    names of those instances (now unable to start) are returned."""
    from capstan.services.instances import instances_using

    repo = LocalRepository(config.root)
    folder = repo.image_dir(name)
    with repo.lock(name):
        if not folder.is_dir():
            raise NotFound(f"no such image: {name} (see 'capstan images')")
        users = instances_using(config, folder)
        if users and not force:
            raise Conflict(f"image {name} is used by instance{'s' * (len(users) > 1)} "
                           f"{', '.join(users)}: delete them first, or use --force")
        try:
            nested = [e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
            if nested:  # ns/ holds images ns/a...: remove ns's own files, index last
                own = sorted((e for e in os.scandir(folder) if e.name not in nested),
                             key=lambda e: e.name == "index.yaml")
                if not own:
                    raise NotFound(f"no such image: {name} (only a namespace)")
                for entry in own:
                    os.unlink(entry.path)
                return users
            trash = temp_path(folder)
            os.rename(folder, trash)  # gone in one step, then removed
        except OSError as err:
            raise write_error(folder, err) from err
        shutil.rmtree(trash, ignore_errors=True)
    return users


def search(config: Config, pattern: str = "*", kind: str | None = None,
           s3: bool = False) -> list[tuple[str, str, str]]:
    """(kind, name, repository) of remote artefacts matching the glob *pattern*."""
    rows = []
    for remote in remotes(config, s3):
        for k, name in remote.names():
            if not is_valid(name, "image" if k == "image" else "package"):
                LOG.warning("%s: skipping %s %s: not a valid name", remote.label, k, ascii(name))
                continue
            if (kind is None or k == kind) and fnmatch(name, pattern if any(
                    c in pattern for c in "*?[") else f"*{pattern}*"):
                rows.append((k, name, remote.label))
    return rows


def import_base(config: Config, source: Path, name: str, description: str = "",
                version: str = "") -> Pulled:
    """Copy a loader or base image into the repository as *name*."""
    from capstan.image.loader import read_loader

    read_loader(source)  # refuses anything that is not an OSv loader or image
    return import_file(config, source, name,
                       FileImport("qemu", {"version": version, "description": description}))


@dataclass(frozen=True)
class FileImport:
    """How :func:`import_file` stores a file: its platform, the fields of its index,
    and a check of the copy (it raises to refuse it)."""

    platform: str
    fields: dict[str, str]
    check: Callable[[Path], object] | None = None


def import_file(config: Config, source: Path, name: str, how: FileImport) -> Pulled:
    """Copy *source* into the repository as *name* for *how*'s platform, its check run
    on the copy before it is published."""
    repo = LocalRepository(config.root)
    target = repo.image_file(name, how.platform)
    repo.images.mkdir(parents=True, exist_ok=True)
    with repo.lock(name):
        sweep(repo.images)
        copy = temp_path(repo.images / target.name)
        try:
            with open_regular(source) as src, atomic_output(copy) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if how.check is not None:
                how.check(copy)
            digest = sha256_of(copy)
            meta = {"format_version": "1", **how.fields, "build": "",
                    "created": timestamps.now(), "sha256": digest,
                    "source": str(source.absolute())}
            publish_image(repo, name, {target.name: copy}, meta,
                          kernel=how.platform == KERNEL)
        except OSError as err:
            raise LocalIOError(f"cannot read {source}: {err.strerror}") from err
        finally:
            copy.unlink(missing_ok=True)
    kind = KERNEL if how.platform == KERNEL else "image"
    return Pulled(name, kind, target, digest, str(source), "imported")


def push_image(config: Config, name: str, url: str, platform: str = "qemu") -> Pulled:
    """Publish image *name* to the bucket at *url* (Capstan's layout, with digests)."""
    repo = LocalRepository(config.root)
    image = repo.image_file(name, platform)
    if not image.is_file():
        raise NotFound(f"no such image: {name}")
    if "/" not in name:
        raise ImageError(f"'{name}': bucket images need a namespace, e.g. me/{name}")
    bucket = BucketRemote(url)
    base = name.rsplit("/", 1)[-1]
    digest = _publish(bucket, image, f"{name}/{base}.{platform}")
    index = repo.image_dir(name) / "index.yaml"
    if index.is_file():
        _publish(bucket, index, f"{name}/index.yaml")
    return Pulled(name, "image", image, digest, url, "pushed")


def push_package(config: Config, name_or_file: str, url: str) -> Pulled:
    """Publish a package (a name in ``<root>/packages`` or a ``.mpm`` file)."""
    path = Path(name_or_file)
    if path.suffix == ".mpm" and path.is_file():
        archive, name = path, path.stem
        manifest = path.with_suffix(".yaml")
    else:
        name = name_or_file
        archive = config.root / "packages" / f"{name}.mpm"
        manifest = config.root / "packages" / f"{name}.yaml"
    if not archive.is_file() or not manifest.is_file():
        raise NotFound(f"no package {name_or_file}: need {archive} and {manifest}")
    bucket = BucketRemote(url)
    digest = _publish(bucket, archive, f"packages/{name}.mpm")
    _publish(bucket, manifest, f"packages/{name}.yaml")  # last: the package is then complete
    return Pulled(name, "package", archive, digest, url, "pushed")


def _publish(bucket: BucketRemote, source: Path, key: str) -> str:
    """Upload *source* and its ``.sha256`` (digest first, so readers can verify)."""
    digest = sha256_of(source)
    stamp = temp_path(source.with_name(f"{source.name}.sha256"))
    atomic_write(stamp, f"{digest}  {source.name}\n".encode())
    try:
        bucket.put(stamp, f"{key}.sha256")
    finally:
        stamp.unlink(missing_ok=True)
    bucket.put(source, key)
    return digest


def image_store(config: Config, name: str) -> ImageStore:
    """Driver *name* as an image store (a cloud's AMIs, images; UnsupportedOperation if it
    keeps none)."""
    return open_driver(name, config).image_store()
