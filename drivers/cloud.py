"""What the cloud drivers (AWS, GCE, OpenStack) share: each is an image store; an instance
is the image uploaded (its command line written in) and a local record under
``$CAPSTAN_ROOT/instances/<driver>/<name>/instance.json``; names are checked; a
foreground run follows a console the cloud hands out as snapshots."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from capstan.core.errors import Conflict, NotFound, UnsupportedOperation, UsageError
from capstan.core.fs import atomic_write, lock
from capstan.drivers.base import (
    UPLOAD,
    Capability,
    Driver,
    Foreground,
    ImageStore,
    Instance,
    InstanceSpec,
    UploadResult,
)

if TYPE_CHECKING:
    from filelock import FileLock

__all__ = ["CloudDriver", "SnapshotFollower", "label_value"]

_LABEL = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """*text* as a cloud label value: lowercase letters, digits, ``_`` and ``-``, at most
    63 characters (what both GCE and OpenStack tags accept)."""
    return _LABEL.sub("-", text.lower())[:63]


class CloudDriver(Driver, ImageStore):
    """A driver whose instances live in a cloud; a local record names each one."""

    capabilities = frozenset({Capability.LOGS, Capability.IMAGES, Capability.DETACH,
                              Capability.GRACEFUL_STOP, Capability.REMOTE})
    name_pattern: ClassVar[re.Pattern[str]]
    name_rule: ClassVar[str]
    poll_seconds: ClassVar[float] = 2.0
    #: the record's keys for the uploaded image's id and the local image it was made of
    image_key: ClassVar[str] = "image"
    source_key: ClassVar[str] = "source"

    def create(self, spec: InstanceSpec) -> Instance:
        """Upload *spec*'s disk (:meth:`upload_spec`) and record the instance:
        :meth:`start` makes the VM."""
        self.new_record(spec)
        planned = self.plan(spec)
        uploaded = self.upload_spec(spec)
        self.save_record(spec.name, {**planned, self.image_key: uploaded.id,
                                     self.source_key: str(spec.image)})
        return self.get(spec.name)

    def upload_spec(self, spec: InstanceSpec) -> UploadResult:
        """Upload *spec*'s image, its command line written in, unless the store holds
        the same bytes: instances with identical disks share one upload, also when made
        at once (one upload of a digest at a time)."""
        with tempfile.TemporaryDirectory(prefix=f"capstan-{self.name}-") as work:
            image = self.disks.prepare(spec, Path(work) / "disk.qcow2", UPLOAD).path
            with self.upload_lock(self.disks.facts(image).sha256):
                return self.upload(image, spec.name)

    def upload_lock(self, digest: str) -> FileLock:
        """The lock held while the store is searched for, then given, image *digest*."""
        return lock(self.config.root, f"upload-{self.name}", digest)

    @abstractmethod
    def plan(self, spec: InstanceSpec) -> dict[str, Any]:
        """Check the cloud can run *spec* before anything is uploaded; the record's
        other fields (its VM not made yet)."""

    def check_name(self, name: str) -> str:
        """*name* when the cloud accepts it as an instance name, else UsageError."""
        if not self.name_pattern.fullmatch(name):
            raise UsageError(f"invalid {self.name} instance name {name[:80]!r}: "
                             f"{self.name_rule}")
        return name

    def _record(self, name: str) -> Path:
        home = self.config.instances / self.name / self.check_name(name)
        if home.is_symlink():  # planted: a record is never followed out of the root
            raise NotFound(f"instance {name}: {home} is a symbolic link, not a record")
        return home / "instance.json"

    def load_record(self, name: str) -> dict[str, Any]:
        """The record of instance *name*, or NotFound."""
        path = self._record(name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise NotFound(f"no such instance: {name}") from err
        except (OSError, ValueError) as err:
            raise NotFound(f"instance {name}: unreadable record {path}") from err
        if not isinstance(data, dict):
            raise NotFound(f"instance {name}: unreadable record {path}")
        return data

    def new_record(self, spec: InstanceSpec) -> Path:
        """The record path for *spec*, checked free (Conflict when the name is taken)."""
        record = self._record(spec.name)
        if record.exists():
            raise Conflict(f"instance {spec.name} exists: delete it first")
        return record

    def save_record(self, name: str, data: dict[str, Any]) -> None:
        """Write the record of *name* atomically."""
        path = self._record(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, sort_keys=True).encode())

    def drop_record(self, name: str) -> None:
        """Remove the record of *name* and its directory."""
        path = self._record(name)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def list(self) -> Iterator[Instance]:
        home = self.config.instances / self.name
        found = []
        for record in sorted(home.glob("*/instance.json")) if home.is_dir() else []:
            if self.name_pattern.fullmatch(record.parent.name):
                with contextlib.suppress(NotFound):
                    found.append(self.get(record.parent.name))
        return iter(found)

    def log_path(self, name: str) -> Path:
        raise UnsupportedOperation(self.name, f"following logs (the {self.name} console "
                                   "is a snapshot: capstan logs without -f)")

    def foreground(self, name: str) -> Foreground:
        """Start *name*; its console is followed through the cloud's snapshots."""
        return SnapshotFollower(self, name)


class SnapshotFollower(Foreground):
    """A cloud instance, its console read as the snapshots the cloud hands out (each
    may restart or drop its start): what is new since the last one is printed."""

    interrupt_note = "stopping the instance"

    def __init__(self, driver: CloudDriver, name: str) -> None:
        self.driver, self.name = driver, name
        self.poll_seconds = driver.poll_seconds
        self.shown = b""  # the last snapshot
        driver.start(name)

    def running(self) -> bool:
        return self.driver.get(self.name).state.live

    def read(self) -> bytes:
        now = self.driver.read_log(self.name)
        if not now:  # nothing yet, or no longer kept
            return b""
        new = now[len(self.shown):] if now.startswith(self.shown) else now
        self.shown = now
        return new

    def stop(self, *, hard: bool = False) -> None:
        if not hard:  # a cloud has no faster stop than the one already asked for
            self.driver.stop(self.name)
