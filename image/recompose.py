"""Recomposing fast: the output's previous image is kept as a spare and updated in place.

Per output file, a private directory below ``$CAPSTAN_ROOT/cache/compose`` holds
``spare`` (the image the output held before its last compose, hard-linked there as the
output was replaced) and two records, ``current.json`` and ``spare.json``: the image's
identity (device, inode, size, mtime, ctime) and, per file of the ROFS, its partition
offset and the identity of its source (host file or archive, by ``lstat``).
A compose whose disk has the same layout as the spare's
(format, virtual size, partition, loader size, ROFS size) rewrites the metadata, the
tables and only the files whose source identity changed, then exchanges the spare with the
output: the image is the same bytes as a fresh compose, and unchanged files are not copied.

The spare is used only when it is certainly what its record says: same identity, one link
(no one else reaches it by a name), and no one has it open (a write lease can be taken),
so a VM still running on that generation of the image is never changed under it. Its
record is removed before the first write, so an interrupted update is never reused. A
source whose identity differs after the copy from before fails the compose ("changed while
composing"), and a source changed within the last :data:`~capstan.core.identity.RACY_NS`
is never trusted to be unchanged later (timestamps are coarser than writes), so it is
always copied again.
Records of an earlier boot are ignored: images are not synced, so a crash may have kept
their new timestamps without their new bytes (nor are the records: a crash voids them).

Spares are bounded: after each compose, the state of an output that no longer exists is
removed, and so is all but that of the :data:`KEEP` outputs composed last; a state another
compose holds (its lock) is left for later.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from capstan.core.errors import LocalIOError
from capstan.core.fs import (
    atomic_write,
    held,
    private_dir,
    replace_file,
    sweep,
    temp_path,
    write_error,
)
from capstan.core.identity import boot_id, identity, settled
from capstan.image.rofs import FileEntry, Reuse

LOG = logging.getLogger(__name__)

__all__ = ["KEEP", "OutputCache", "fingerprint", "state_dir"]
_OURS_AND_OUTPUT = 2  # links of a kept image: the output's and ours

#: outputs whose recompose state (and spare: a whole image) is kept, the last composed
KEEP = 8
_DIGEST = re.compile(r"[0-9a-f]{32}")
_PATH_MAX = 4096
_VERSION = 1
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
Fingerprint = list[Any] | None


def fingerprint(entry: FileEntry) -> Fingerprint:
    """What must be unchanged for *entry*'s bytes to be: its source's identity, or None
    (bytes in memory, or a source that cannot be read: always written)."""
    if entry.source is not None:
        path, where = entry.source, [entry.size]
    elif entry.extent is not None:
        extent = entry.extent
        path, where = extent.path, [extent.offset, extent.size, extent.gzip]
    else:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [str(path), *where, *identity(st)]


def _settled(print_: Fingerprint, now: int) -> Fingerprint:
    """*print_*, or None when its file changed too recently to be told apart from a later
    write with the same timestamps (its identity ends the fingerprint)."""
    return print_ if print_ is not None and settled(print_[-5:], now) else None


def state_dir(root: Path, output: Path) -> Path:
    """Where the recompose state of *output* lives below ``$CAPSTAN_ROOT`` *root*."""
    digest = hashlib.sha256(os.fsencode(output.absolute())).hexdigest()[:32]
    return root / "cache" / "compose" / digest


class OutputCache:
    """The recompose state of one *output*, kept below ``$CAPSTAN_ROOT`` *root*; use as a
    context manager (it holds the output's compose lock)."""

    def __init__(self, root: Path, output: Path, layout: Sequence[Any]) -> None:
        self.output = output.absolute()
        self.layout = list(layout)
        self.root = root
        self.dir = state_dir(root, output)
        private_dir(self.dir.parent)
        self._lock = contextlib.ExitStack()
        self.tmp: Path | None = None
        self.spare: dict[str, Any] | None = None
        self.before: dict[int, Fingerprint] = {}
        self.written: tuple[int, int] | None = None  # (device, inode) of the image we wrote

    def __enter__(self) -> OutputCache:
        with contextlib.ExitStack() as stack:
            stack.enter_context(held(self.root, "compose", self.dir.name))
            private_dir(self.dir)
            sweep(self.dir)
            self._lock = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.close()

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return None
        if not data.get("boot") or data.get("boot") != boot_id():
            return None
        if data.get("layout") != self.layout or not isinstance(data.get("files"), dict):
            return None
        return data

    @contextlib.contextmanager
    def image(self, pending: Sequence[tuple[int, FileEntry]]) -> Iterator[
            tuple[BinaryIO, Reuse | None]]:
        """The file to write the image into, and what it already holds: the spare, updated
        in place, or a new file beside the output. Removed if the block fails."""
        self.before = {offset: fingerprint(entry) for offset, entry in pending}
        f = self._take_spare()
        reuse = self._reuse if f is not None else None
        tmp = self.tmp = self.dir / "spare" if f is not None else temp_path(self.output)
        if f is None:
            try:
                f = os.fdopen(os.open(tmp, _NEW_FILE, 0o666), "w+b")
            except OSError as err:
                raise write_error(self.output, err) from err
        st = os.fstat(f.fileno())
        self.written = (st.st_dev, st.st_ino)
        try:
            with f:
                yield f, reuse
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _reuse(self, offset: int, entry: FileEntry) -> bool:
        print_ = self.before.get(offset)
        files = self.spare["files"] if self.spare else {}
        return print_ is not None and files.get(str(offset)) == print_

    def _take_spare(self) -> BinaryIO | None:
        """The spare opened for writing, if it is what its record says and no one else has
        it open; its record is removed first."""
        record = self._load("spare.json")
        if record is None:
            return None
        try:
            fd = os.open(self.dir / "spare", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        try:
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1
                    or identity(st) != record.get("image")
                    or os.stat(self.output.parent).st_dev != st.st_dev):
                raise OSError("not the recorded spare")
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)  # refused if anyone has it open
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.unlink(self.dir / "spare.json")
        except OSError:
            os.close(fd)
            return None
        self.spare = record
        return os.fdopen(fd, "r+b")

    def publish(self, pending: Sequence[tuple[int, FileEntry]]) -> None:
        """Check that no source changed while it was copied, then make the image the output;
        the output's previous image becomes the spare."""
        tmp = self.tmp
        assert tmp is not None
        after = {offset: fingerprint(entry) for offset, entry in pending}
        if after != self.before:
            tmp.unlink(missing_ok=True)
            changed = next(e for o, e in pending if after[o] != self.before[o])
            where = changed.source or (changed.extent.path if changed.extent else changed.path)
            raise LocalIOError(f"{where}: changed while composing ({changed.path})")
        now = time.time_ns()
        record = {"version": _VERSION, "boot": boot_id(), "layout": self.layout, "files": {
            str(offset): _settled(print_, now) for offset, print_ in after.items()}}
        try:
            self._swap(tmp, record)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise write_error(self.output, err) from err
        collect_garbage(self.root, self.dir.name)

    def _swap(self, tmp: Path, record: dict[str, Any]) -> None:
        current = self._load("current.json")
        kept = self._keep_output(current)
        replace_file(tmp, self.output)
        try:
            self._record(kept, current, record)
        except (OSError, LocalIOError) as err:  # the output is written: the state is forgotten
            LOG.warning("forgetting the recompose state of %s: %s", self.output, err)
            for name in ("spare.json", "current.json"):
                with contextlib.suppress(OSError):
                    (self.dir / name).unlink(missing_ok=True)

    def _record(self, kept: Path | None, current: dict[str, Any] | None,
                record: dict[str, Any]) -> None:
        """Keep *kept* (the output's previous image, *current*) as the spare, and *record*
        the new output (and its path, for :func:`collect_garbage`)."""
        if not (self.dir / "output").exists():
            atomic_write(self.dir / "output", os.fsencode(self.output), 0o600, sync=False)
        st = os.lstat(self.output)  # None: another compose renamed its image over ours
        record["image"] = identity(st) if (st.st_dev, st.st_ino) == self.written else None
        (self.dir / "spare.json").unlink(missing_ok=True)
        if kept is not None and current is not None:
            os.replace(kept, self.dir / "spare")
            current["image"] = identity(os.lstat(self.dir / "spare"))
            atomic_write(self.dir / "spare.json", json.dumps(current).encode(), 0o600,
                         sync=False)
        else:
            (self.dir / "spare").unlink(missing_ok=True)
        atomic_write(self.dir / "current.json", json.dumps(record).encode(), 0o600, sync=False)

    def _keep_output(self, current: dict[str, Any] | None) -> Path | None:
        """A new link to the output's image in the cache, if it is the image *current*
        records (so its content is known) and nothing else links it."""
        try:
            before = os.lstat(self.output)
        except OSError:
            return None
        if (current is None or not stat.S_ISREG(before.st_mode) or before.st_nlink != 1
                or identity(before) != current.get("image")):
            return None
        kept = temp_path(self.dir / "spare")
        try:
            os.link(self.output, kept, follow_symlinks=False)
            st = os.lstat(kept)
        except OSError:
            return None
        if st.st_nlink == _OURS_AND_OUTPUT and identity(st)[:4] == identity(before)[:4]:
            return kept  # the same inode, unwritten (linking changed only its ctime)
        kept.unlink()
        return None


def collect_garbage(root: Path, keep: str) -> None:
    """Remove the recompose state of outputs that no longer exist, and all but the
    :data:`KEEP` most recently composed (the state named *keep*, the caller's, counts as one
    and stays); a state whose lock someone holds is left alone."""
    folder = root / "cache" / "compose"
    try:
        states = [Path(e.path) for e in os.scandir(folder) if e.name != keep
                  and _DIGEST.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    states.sort(key=_last_composed, reverse=True)
    for n, state in enumerate(states):
        with contextlib.suppress(LocalIOError), \
                held(root, "compose", state.name, wait=False) as got:
            if got and (n >= KEEP - 1 or _output_gone(state)):
                shutil.rmtree(state, ignore_errors=True)


def _last_composed(state: Path) -> int:
    try:
        return (state / "current.json").stat().st_mtime_ns
    except OSError:
        return 0


def _recorded_output(state: Path) -> bytes:
    """The output path *state* records; empty when unknown (a record that is no regular
    file, say a FIFO or a link, is not read)."""
    try:
        fd = os.open(state / "output", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as f:
        return f.read(_PATH_MAX) if stat.S_ISREG(os.fstat(fd).st_mode) else b""


def _output_gone(state: Path) -> bool:
    """Whether the output *state* records no longer exists (False when it is not known)."""
    output = _recorded_output(state)
    if not output or b"\0" in output:
        return False
    try:
        os.lstat(output)
        return False
    except FileNotFoundError:
        return True
    except OSError:
        return False
