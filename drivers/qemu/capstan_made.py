"""QEMU instances Go Capstan made: ``instances/qemu/<name>/`` with its ``osv.config``.

Capstan (reference 6.13, 12.5) keeps no pid and no state of its own: the QEMU of an
instance is the process whose argv names the instance's QMP socket ``osv.monitor``,
and ``delete`` removes ``disk.qcow2``, ``osv.monitor``, ``osv.config`` and
``vnc-domain-socket``, then the directory. Here stop is a real QMP shutdown (Capstan's
left QEMU running), and delete removes only those files, after the process is gone;
anything else in the directory is left and reported. Paths come from the directory,
never from ``osv.config`` (which anyone could have written).
"""

from __future__ import annotations

import os
from pathlib import Path

from capstan.core.errors import Conflict, LocalIOError
from capstan.drivers.base import Instance, InstanceState
from capstan.drivers.qemu.machine import QemuMachine, find_pid

__all__ = ["CAPSTAN_FILES", "capstan_instance", "delete_capstan_made", "is_capstan_made",
           "stop_capstan_made"]

#: what Capstan's delete removes (its own files), in that order
CAPSTAN_FILES = ("disk.qcow2", "osv.monitor", "osv.config", "vnc-domain-socket")


def is_capstan_made(folder: Path) -> bool:
    """Whether *folder* is an instance Capstan made (its ``osv.config``, none of ours);
    a symlink never is (deleting through it would delete files elsewhere)."""
    return (not folder.is_symlink() and (folder / "osv.config").is_file()
            and not (folder / "instance.json").exists())


def _machine(folder: Path) -> QemuMachine:
    monitor = folder.absolute() / "osv.monitor"
    return QemuMachine.attach(folder.name, qmp=monitor, pid=find_pid(str(monitor)))


def capstan_instance(folder: Path, driver: str) -> Instance:
    """The instance in *folder* as ``instances`` shows it: running while a QEMU with its
    monitor socket lives."""
    pid = _machine(folder).pid
    state = InstanceState.RUNNING if pid else InstanceState.STOPPED
    return Instance(folder.name, driver, state, "", pid=pid,
                    extra={"created_by": "capstan"})


def stop_capstan_made(folder: Path, timeout: float) -> Instance:
    """Stop the QEMU of Capstan's instance in *folder* (ACPI, then quit, then kill)."""
    with _machine(folder) as machine:
        machine.shutdown(timeout)
    return capstan_instance(folder, "qemu")


def delete_capstan_made(folder: Path) -> None:
    """Stop the instance, then remove Capstan's files and the directory; files Capstan
    did not make are left in place (Conflict names them)."""
    stop_capstan_made(folder, timeout=30)
    if _machine(folder).pid:
        raise Conflict(f"instance {folder.name} is still running")
    try:
        for name in CAPSTAN_FILES:
            (folder / name).unlink(missing_ok=True)  # a symlink is removed, not followed
        left = sorted(os.listdir(folder))
        if not left:
            folder.rmdir()
    except OSError as err:
        raise LocalIOError(f"cannot delete instance {folder.name}: {err.strerror}") from err
    if left:
        shown = ", ".join(ascii(n) for n in left[:5])
        raise Conflict(f"instance {folder.name}: removed Capstan's files; {folder} still "
                       f"holds files Capstan did not make ({shown}), left in place")

