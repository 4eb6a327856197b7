"""QEMU's accelerator: ``qemu_accel`` as configured, or what ``auto`` finds on this host."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from capstan.core.config import Setting

__all__ = ["KVM_DEVICE", "QEMU_ACCEL", "pick"]

LOG = logging.getLogger(__name__)
KVM_DEVICE = Path("/dev/kvm")
#: read by the QEMU and libvirt drivers
QEMU_ACCEL = Setting("qemu_accel", default="auto", choices=("auto", "kvm", "hvf", "tcg"),
                     help="QEMU accelerator: auto (hvf on macOS, kvm on Linux when usable, "
                          "else tcg), kvm, hvf or tcg")


def pick(wanted: str, *, disable_kvm: bool) -> str:
    """*wanted* unless it is ``auto``: then hvf on macOS, kvm on Linux when ``/dev/kvm``
    is usable, else tcg with a warning; *disable_kvm* rules out both kvm and hvf."""
    if wanted != "auto":
        return wanted
    if not disable_kvm:
        if sys.platform == "darwin":
            return "hvf"
        if sys.platform.startswith("linux") and os.access(KVM_DEVICE, os.R_OK | os.W_OK):
            return "kvm"
    LOG.warning("no hardware acceleration here (KVM on Linux, HVF on macOS): running QEMU "
                "with TCG (slow emulation)")
    return "tcg"
