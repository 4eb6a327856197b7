"""The one exception tree of pycapstan, and the exit codes the CLI maps it to.

::

    CapstanError                  70  internal error (a bug; never a traceback)
    ├── UsageError                64  malformed option, size, env, rule or spec
    ├── InputError                65  invalid input data (files, YAML, images)
    │   ├── NotFound              65  unknown image, package, instance, path
    │   ├── ImageError            65  not an OSv image / loader, bad layout
    │   └── Conflict              65  name taken, path conflict
    ├── ConfigError               78  invalid configuration file or value
    ├── BackendError              69  a hypervisor or external tool failed
    │   ├── ToolMissing           69  a required program is not installed
    │   ├── CommandFailed         69  a subprocess exited non-zero
    │   └── UnsupportedOperation  69  the driver cannot do this
    ├── LocalIOError              74  reading or writing local files failed
    ├── RemoteError               75  network or remote repository failure
    ├── GuestTimeout             124  the guest did not finish in time
    └── GuestFailure             134  the guest crashed or aborted

Only the CLI boundary (:mod:`capstan.shell`) turns these into messages and
exit codes; library code raises them with ``raise ... from err``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = [
    "BackendError",
    "CapstanError",
    "CommandFailed",
    "ConfigError",
    "Conflict",
    "GuestFailure",
    "GuestTimeout",
    "ImageError",
    "InputError",
    "LocalIOError",
    "NotFound",
    "RemoteError",
    "ToolMissing",
    "UnsupportedOperation",
    "UsageError",
]


class CapstanError(Exception):
    """Root of every error pycapstan raises on purpose."""

    exit_code = 70


class UsageError(CapstanError):
    """A command-line value is malformed."""

    exit_code = 64


class InputError(CapstanError):
    """Input data (a file, tree, manifest or image) is invalid."""

    exit_code = 65


class NotFound(InputError):
    """A named thing (image, package, instance, path) does not exist."""


class ImageError(InputError):
    """A disk image or loader does not have the expected layout."""


class Conflict(InputError):
    """A name is already taken, or two inputs claim the same path."""


class ConfigError(CapstanError):
    """The configuration is invalid."""

    exit_code = 78


class BackendError(CapstanError):
    """A hypervisor, cloud or external tool failed."""

    exit_code = 69


class ToolMissing(BackendError):
    """A required external program is not installed."""


class UnsupportedOperation(BackendError):
    """The selected driver does not support an operation."""

    def __init__(self, driver: str, operation: str) -> None:
        super().__init__(f"driver '{driver}' does not support {operation}")
        self.driver = driver
        self.operation = operation


class CommandFailed(BackendError):
    """A subprocess exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = _last_line(stderr) or f"exit status {returncode}"
        super().__init__(f"{os.path.basename(self.argv[0])} failed: {detail}")


class LocalIOError(CapstanError):
    """Reading or writing a local file failed."""

    exit_code = 74


class RemoteError(CapstanError):
    """A network request or remote repository failed."""

    exit_code = 75


class GuestTimeout(CapstanError):
    """The guest did not reach the expected state in time."""

    exit_code = 124


class GuestFailure(CapstanError):
    """The guest crashed, aborted or reported a failure."""

    exit_code = 134


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
