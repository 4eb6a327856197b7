"""Gap 7 of issue 17 (the real host): KVM that opens but fails, detected by ``auto``.

Capstan (reference 13 #14): "``-cpu host`` ... aborting QEMU under some nested KVM
setups (CS#185)" -> pycapstan: "TCG fallback with a warning, ... ``capstan doctor``
preflight with exact fixes". This host's ``/dev/kvm`` opens, yet QEMU aborts under it
(``failed to set MSR 0x10a``): the smoke runs the probe guest with ``qemu_accel: auto``
and checks it was detected, cached, fallen back from and explained.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from capstan.drivers.qemu.kvmprobe import probe_argv

pytestmark = pytest.mark.qemu


def _kvm_aborts() -> bool:
    """What QEMU itself does here with KVM and the host CPU."""
    done = subprocess.run(probe_argv("qemu-system-x86_64"), capture_output=True, timeout=60,
                          input=b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
                          check=False)
    return done.returncode != 0


def test_auto_detects_failing_kvm_falls_back_and_doctor_explains(
        cli, image: Path, capstan_root: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: auto picks TCG without probing")
    if not _kvm_aborts():
        pytest.skip("KVM works on this host (tests/functional/test_run.py::test_kvm_smoke)")
    env = dict(os.environ, CAPSTAN_QEMU_ACCEL="auto")
    done = cli.program("run", "-i", image, "--rm", "auto1", env=env)
    assert done.returncode == 0, done.stderr
    assert "PROBE done" in done.stdout
    warnings = [ln for ln in done.stderr.splitlines() if "KVM fails here" in ln]
    assert len(warnings) == 1 and "running QEMU with TCG" in warnings[0]
    cache = json.loads((capstan_root / "cache" / "kvm.json").read_text())
    assert [v["usable"] for v in cache.values()] == [False]
    again = cli.program("run", "-i", image, "--rm", "auto2", env=env)  # cached: same verdict
    assert again.returncode == 0 and "KVM fails here" in again.stderr
    rows = {r["Check"]: r for r in json.loads(cli("doctor", "-f", "json").out)}
    assert rows["kvm-run"]["Status"] == "warn"
    assert "QEMU aborts under KVM" in rows["kvm-run"]["Detail"]
    assert "qemu_accel" in rows["kvm-run"]["Fix"]
