"""The QEMU driver: ``argv`` (a pure function, golden-tested), ``machine`` (one QEMU
process and its QMP connection) and ``driver`` (instances on disk)."""

from capstan.drivers.qemu.argv import private_segment
from capstan.drivers.qemu.driver import QemuDriver
from capstan.drivers.qemu.host import bridge_helper
from capstan.drivers.qemu.kvmprobe import KvmVerdict, kvm_verdict
from capstan.drivers.qemu.machine import QemuMachine

__all__ = ["KvmVerdict", "QemuDriver", "QemuMachine", "bridge_helper", "kvm_verdict",
           "private_segment"]
