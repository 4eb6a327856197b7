"""What the cloud drivers (GCE, OpenStack) share: instance records kept under
``$CAPSTAN_ROOT/instances/<driver>/<name>/instance.json``, checked instance names,
and a foreground run that follows a console the cloud hands out as snapshots."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from capstan.core.errors import Conflict, GuestTimeout, NotFound, UnsupportedOperation, UsageError
from capstan.core.fs import atomic_write
from capstan.drivers.base import Driver, Instance, InstanceSpec, console_verdict

__all__ = ["CloudDriver", "label_value"]

_LABEL = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """*text* as a cloud label value: lowercase letters, digits, ``_`` and ``-``, at most
    63 characters (what both GCE and OpenStack tags accept)."""
    return _LABEL.sub("-", text.lower())[:63]


class CloudDriver(Driver):
    """A driver whose instances live in a cloud; a local record names each one."""

    name_pattern: ClassVar[re.Pattern[str]]
    name_rule: ClassVar[str]
    poll_seconds: ClassVar[float] = 2.0

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

    def run_foreground(self, name: str, out: BinaryIO, timeout: float | None = None) -> int:
        """Start *name* and copy its console snapshots to *out* until it stops."""
        self.start(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = b""  # the last snapshot
        seen = bytearray()  # everything printed

        def pump() -> None:
            nonlocal shown
            now = self.read_log(name)
            if not now:  # nothing yet, or no longer kept
                return
            new = now[len(shown):] if now.startswith(shown) else now
            if new:
                out.write(new)
                out.flush()
                seen.extend(new)
            shown = now

        try:
            while self.get(name).state.live:
                pump()
                if deadline is not None and time.monotonic() > deadline:
                    self.stop(name)
                    raise GuestTimeout(f"instance {name} did not finish within {timeout} s")
                time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            out.write(b"\r\ncapstan: stopping the instance...\r\n")
            out.flush()
            self.stop(name)
            raise
        pump()
        return console_verdict(name, bytes(seen))
