"""capstan bench boot on probe images under TCG: the table, JSON and OSv's bootchart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capstan.services.bench import percentile

from conftest import states

pytestmark = pytest.mark.qemu


def test_table_beside_bare_qemu(cli, image: Path) -> None:
    done = cli("bench", "boot", image, "-n", "2", "--until", "PROBE done")
    assert done.code == 0, done
    for runner in ("capstan", "qemu"):
        for measure in ("first byte", "marker"):
            assert any(runner in line and measure in line for line in done.out.splitlines())
    assert states(cli) == {}


def test_json_power_off_and_bootchart(cli, image: Path) -> None:
    done = cli("bench", "boot", image, "-n", "1", "-e", "--bootchart Total time: 12.00ms,",
               "-f", "json")
    assert done.code == 0, done
    rows = {(r["Runner"], r["Measure"]): r for r in json.loads(done.out)}
    assert set(rows) == {(runner, measure) for runner in ("capstan", "qemu")
                         for measure in ("first byte", "power-off", "osv bootchart")}
    assert rows["qemu", "osv bootchart"]["p50 (s)"] == 0.012
    first, off = rows["qemu", "first byte"], rows["qemu", "power-off"]
    assert 0 < first["p50 (s)"] <= off["p50 (s)"] and first["Runs"] == 1


def test_microvm(cli, app_tree: Path, tmp_path: Path) -> None:
    disk = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", disk, app_tree).code == 0
    done = cli("bench", "boot", disk, "-n", "1", "--machine", "microvm", "--kernel",
               "probe-kernel", "-m", "64M", "-f", "json")
    assert done.code == 0, done
    assert len(json.loads(done.out)) == 4


@pytest.mark.parametrize(("args", "code", "text"), [
    (("-n", "0"), 64, "invalid -n 0"),
    (("--until", "(x"), 64, "invalid --until '(x'"),
    (("--until", "never", "--timeout", "30"), 134, "the guest ended before /never/ appeared"),
    (("-e", "@deaf", "--timeout", "1"), 124, "did not boot within 1 s"),
])
def test_refused_or_failed(cli, image: Path, args: tuple[str, ...], code: int,
                           text: str) -> None:
    done = cli("bench", "boot", image, "-n", "1", *args)
    assert done.code == code and text in done.err, done
    assert states(cli) == {}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert (percentile(values, 50), percentile(values, 90)) == (10.0, 18.0)
    assert percentile([3.0], 90) == 3.0
