"""Files that are whole or absent, whatever kills the process writing them.

Temporary files and directories get unique names that carry their owner's
process identity (``.capstan-tmp.<pid>-<start time>.<random>.<name>``), so
:func:`sweep` can remove those whose owner is gone. Writes go to such a name and
are renamed into place; directories are published by one rename (or an atomic
exchange with the one they replace). Locks live in ``$CAPSTAN_ROOT/locks``
(0700), never in a shared directory that another user could create first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from capstan.core import pids
from capstan.core.errors import ImageError, LocalIOError

if TYPE_CHECKING:
    from filelock import FileLock

__all__ = ["TEMP_PREFIX", "atomic_output", "atomic_write", "exchange", "held", "lock",
           "open_regular", "replace_file",
           "owner_alive", "private_dir", "process_token", "publish_dir", "read_from", "sha256_of",
           "sweep", "temp_dir", "temp_path", "write_error"]

TEMP_PREFIX = ".capstan-tmp."
_RENAME_EXCHANGE = 2


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at *path*, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_error(path: Path, err: OSError) -> LocalIOError:
    """The one-line error for a failed write of *path* (ENOSPC included)."""
    return LocalIOError(f"cannot write {path}: {err.strerror or err}")


def process_token(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of process *pid* (this one by default): unique across
    PID reuse, since a reused PID has a later start time; ``""`` if it is gone."""
    return pids.token(pid)


def owner_alive(token: str) -> bool:
    """Whether the process that *token* (from :func:`process_token`) names still runs."""
    pid, _, _ = token.partition("-")
    return pid.isdigit() and process_token(int(pid)) == token


def temp_path(target: Path) -> Path:
    """A fresh name next to *target* for a file or directory that becomes *target*."""
    return target.with_name(f"{TEMP_PREFIX}{process_token()}.{secrets.token_hex(6)}."
                            f"{target.name}")


def temp_dir(target: Path) -> Path:
    """Create a fresh private directory next to *target*, to be published as *target*."""
    path = temp_path(target)
    try:
        path.mkdir(mode=0o700)
    except OSError as err:
        raise write_error(path, err) from err
    return path


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o644, *, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes *path* (with *mode*) only if the block succeeds;
    a write error raises LocalIOError naming *path*. Its bytes reach the disk before the
    rename unless *sync* is False (for what a crash makes worthless anyway)."""
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, sync: bool = True) -> None:
    """Write *data* to *path* through a unique temporary file and a rename (see
    :func:`atomic_output` for *sync*)."""
    with atomic_output(path, mode, sync=sync) as f:
        f.write(data)


def exchange(a: Path, b: Path) -> None:
    """Swap *a* and *b* atomically (both must exist; Linux ``renameat2``)."""
    import ctypes  # only here: ~1 ms of every start-up otherwise

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                      _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


def replace_file(new: Path, target: Path) -> None:
    """Make the regular file *new* be *target* in one step (OSError if it cannot).

    An existing regular *target* is exchanged with *new* and then removed: renamed over,
    ext4 (``auto_da_alloc``) would start writing *new* back before the rename returns, some
    40-60 ms for a 220 MiB image. Anything else at *target* is replaced by a rename, as
    ``os.replace`` does; a *target* that turns into something else meanwhile is put back."""
    try:
        regular = stat.S_ISREG(os.lstat(target).st_mode)
    except FileNotFoundError:
        regular = False
    if regular:
        try:
            exchange(new, target)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS):
                raise
        else:
            if stat.S_ISREG(os.lstat(new).st_mode):
                os.unlink(new)  # the previous target
                return
            exchange(new, target)  # not the file we saw: back as it was
            raise OSError(errno.EEXIST, "replaced while composing", str(target))
    os.replace(new, target)


def publish_dir(staged: Path, target: Path) -> None:
    """Make the complete directory *staged* be *target* in one step.

    An existing *target* is swapped out atomically and then removed, so readers
    see the old directory or the new one, never a mix or nothing."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, target)  # also replaces an empty directory
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        exchange(staged, target)
    except OSError as err:
        raise write_error(target, err) from err
    shutil.rmtree(staged, ignore_errors=True)  # now the old directory


def sweep(folder: Path) -> None:
    """Remove the temporaries in *folder* whose owning process is gone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        token = entry.name[len(TEMP_PREFIX):].split(".", 1)[0]
        if owner_alive(token):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def private_dir(path: Path) -> Path:
    """*path* as a directory that only this user can enter (made 0700 if missing);
    one that someone else owns or can write is refused."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as err:
        raise write_error(path, err) from err
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise LocalIOError(f"{path} is not a directory of this user: remove it")
    if st.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as err:
            raise write_error(path, err) from err
    return path


def _lock_path(root: Path, kind: str, name: str) -> Path:
    folder = private_dir(root / "locks")
    key = name.replace("%", "%25").replace("/", "%2F")
    return folder / f"{kind}.{key}.lock"


def lock(root: Path, kind: str, name: str, poll_interval: float = 0.05) -> FileLock:
    """The lock of *name* among *kind* (``image``, ``package``, ...), kept in
    ``<root>/locks`` (0700). Names may hold ``/``, which the file name encodes."""
    from filelock import FileLock  # only where a lock is taken: ~10 ms to import

    return FileLock(str(_lock_path(root, kind, name)), mode=0o600,
                    poll_interval=poll_interval)


@contextlib.contextmanager
def held(root: Path, kind: str, name: str, *, wait: bool = True) -> Iterator[bool]:
    """The lock :func:`lock` gives, held for the block (True), as a plain ``flock`` of the
    same file, which excludes filelock's: for the compose path, whose start-up filelock's
    import would lengthen. With *wait* False a lock held elsewhere is not waited for: the
    block gets False (and holds nothing)."""
    path = _lock_path(root, kind, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        except OSError as err:
            raise write_error(path, err) from err
        yield got
    finally:
        os.close(fd)


def open_regular(path: Path) -> BinaryIO:
    """*path* opened for reading, refused (ImageError, 65) unless it is a regular file:
    a FIFO or device is never read (the open does not block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{path}: not a regular file")
    return open(fd, "rb")


def read_from(path: Path, offset: int) -> bytes:
    """What *path* holds past *offset* (nothing when it does not exist): a log's new part."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""
