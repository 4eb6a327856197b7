"""Gap 7 of issue 17 (unit part): KVM that opens but fails.

Capstan (reference 13 #14): "``-cpu host,+x2apic`` fixed, aborting QEMU under some
nested KVM setups (CS#185); KVM-busy hint only" -> pycapstan: "TCG fallback with a
warning, ... ``capstan doctor`` preflight with exact fixes". The abort seen on nested
hosts: ``error: failed to set MSR 0x10a to 0x69`` then ``kvm_buf_set_msrs: Assertion
`ret == cpu->kvm_msr_buf->nmsrs' failed``. The real host is exercised by
``tests/functional/test_parity_kvm.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from capstan.core.config import load
from capstan.core.errors import CommandFailed
from capstan.drivers.qemu import QemuDriver, kvm_verdict, kvmprobe

ABORT = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
         "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
         "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n")


class FakeQemu:
    """``proc.run`` standing in for QEMU: -version answers, a KVM guest aborts or quits."""

    def __init__(self, works: bool, version: str = "QEMU emulator version 7.2.22") -> None:
        self.works = works
        self.version = version
        self.probes: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        if argv[1:] == ["-version"]:
            return type("Done", (), {"stdout": f"{self.version}\n".encode()})()
        self.probes.append(argv)
        assert kwargs["input_bytes"].endswith(b'{"execute": "quit"}\n')
        if not self.works:
            raise CommandFailed(argv, -6, ABORT)
        return type("Done", (), {"stdout": b""})()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeQemu:
    qemu = FakeQemu(works=False)
    monkeypatch.setattr(kvmprobe.proc, "run", qemu)
    return qemu


def test_probed_once_per_host_and_qemu_version(fake: FakeQemu, tmp_path: Path) -> None:
    first = kvm_verdict(tmp_path, "/usr/bin/qemu-system-x86_64")
    assert not first.usable and not first.cached
    assert first.reason == "error: failed to set MSR 0x10a to 0x69"
    again = kvm_verdict(tmp_path, "/usr/bin/qemu-system-x86_64")
    assert again.cached and not again.usable and len(fake.probes) == 1
    cache = json.loads((tmp_path / "cache" / "kvm.json").read_text())
    (key,) = cache
    assert "QEMU emulator version 7.2.22" in key and key.endswith("-cpu host")
    fake.version = "QEMU emulator version 8.2.0"  # another QEMU: probed afresh
    fake.works = True
    assert kvm_verdict(tmp_path, "/usr/bin/qemu-system-x86_64").usable
    assert len(fake.probes) == 2
    assert kvm_verdict(tmp_path, "/usr/bin/qemu-system-x86_64", cpu="max").usable
    assert fake.probes[-1][fake.probes[-1].index("-cpu") + 1] == "max"


def test_probe_argv_runs_nothing_but_a_paused_guest() -> None:
    args = kvmprobe.probe_argv("qemu", "host")
    assert args[args.index("-accel") + 1] == "kvm" and "-S" in args
    assert "-drive" not in args and "-netdev" not in args


def test_a_damaged_cache_is_probed_again(fake: FakeQemu, tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kvm.json").write_text("[not json")
    assert not kvm_verdict(tmp_path, "qemu").cached
    assert len(fake.probes) == 1


def _driver(tmp_path: Path, accel: str) -> QemuDriver:
    config = load({}, {"CAPSTAN_ROOT": str(tmp_path), "CAPSTAN_QEMU_ACCEL": accel})
    driver = QemuDriver(config)
    driver.qemu_binary = lambda: "/usr/bin/qemu-system-x86_64"  # type: ignore[method-assign]
    return driver


def test_auto_falls_back_to_tcg_with_one_warning(fake: FakeQemu, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("capstan.drivers.qemu.accel.os.access", lambda path, mode: True)
    caplog.set_level(logging.WARNING)
    assert _driver(tmp_path, "auto").accelerator() == "tcg"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("KVM fails here (QEMU aborts under it: error: failed to "
                                  "set MSR 0x10a to 0x69): running QEMU with TCG")
    fake.works = True
    assert _driver(tmp_path, "auto").accelerator("max") == "kvm"  # another CPU model
    assert _driver(tmp_path, "kvm").accelerator() == "kvm"  # asked for: not second-guessed
    assert len(fake.probes) == 2
