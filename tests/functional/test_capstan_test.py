"""capstan test on probe images under TCG: passes and fails for the right reasons."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import states

pytestmark = pytest.mark.qemu


def _cases(out: str) -> dict[str, list[str]]:
    """Case -> [result, status, reason] from ``-f json``."""
    return {row["Case"]: [row["Result"], row["Status"], row["Reason"]] for row in json.loads(out)}


def test_pass_when_every_pattern_appears(cli, image: Path) -> None:
    done = cli("test", image, "--expect", "PROBE cmdline", "--expect", r"rofs-magic=ok")
    assert done.code == 0, done
    assert "| pass" in done.out and "1 passed, 0 failed in" in done.out
    assert states(cli) == {}


@pytest.mark.parametrize(("args", "reason"), [
    (("--expect", "never comes"), "the guest ended before /never comes/ appeared"),
    (("-e", "/hello; program exited with status 3"), "exit status 3, expected 0"),
    (("-e", "/hello; program exited with status 3", "--exit", "4"),
     "exit status 3, expected 4"),
    (("-e", "/hello Aborted"), "crashed ('Aborted' on its console)"),
    (("--reject", r"rofs-magic=\w+"), "rejected /rofs-magic=\\w+/ seen: 'rofs-magic=ok'"),
    (("-e", "@deaf", "--expect", "PROBE done", "--expect", "never", "--timeout", "2"),
     "timed out after 2 s waiting for /never/"),
    (("-e", "@deaf", "--exit", "0", "--timeout", "2"),
     "timed out after 2 s waiting for the guest to end"),
])
def test_fails_for_the_right_reason(cli, image: Path, args: tuple[str, ...],
                                    reason: str) -> None:
    done = cli("test", image, *args, "-f", "json")
    assert done.code == 1, done
    [(result, _, why)] = _cases(done.out).values()
    assert result == "FAIL" and reason in why, why
    assert states(cli) == {}


def test_exit_status_is_checked(cli, image: Path) -> None:
    done = cli("test", image, "-e", "/hello; program exited with status 3", "--exit", "3",
               "-f", "json")
    assert done.code == 0, done
    assert _cases(done.out)[str(image)] == ["pass", 3, ""]


def test_file_of_cases_in_parallel_with_junit(cli, image: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "capstan-tests.yaml").write_text(f"""
image: {image}
timeout: 30
tests:
  - name: boots
    expect: PROBE done
  - name: status 5
    execute: "/x program exited with status 5"
    exit: 5
  - name: wants 0
    execute: "/x program exited with status 5"
    env: {{K: v}}
""")
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "junit.xml"
    done = cli("test", "-j", "2", "--junit", report)
    assert done.code == 1, done
    assert "2 passed, 1 failed in" in done.out
    root = ET.parse(report).getroot()
    [suite] = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["boots", "status 5", "wants 0"]
    assert cases["boots"].find("failure") is None
    failure = cases["wants 0"].find("failure")
    assert failure is not None and failure.get("message") == "exit status 5, expected 0"
    out = cases["wants 0"].findtext("system-out") or ""
    assert "--env=K=v" in out and "PROBE done" in out
    assert states(cli) == {}


def test_microvm_case(cli, app_tree: Path, tmp_path: Path) -> None:
    disk = tmp_path / "kl.raw"
    assert cli("compose", "--kernel-less", "-o", disk, app_tree).code == 0
    done = cli("test", disk, "--machine", "microvm", "--kernel", "probe-kernel",
               "--expect", r"cmdline=\[--nopci --rootfs=rofs", "--expect", "rofs-magic=ok")
    assert done.code == 0, done


def test_a_case_that_cannot_boot_fails(cli, image: Path) -> None:
    done = cli("test", image, "--machine", "microvm", "--kernel", "/nonexistent", "-f", "json")
    assert done.code == 1
    [(result, _, why)] = _cases(done.out).values()
    assert result == "FAIL" and why.startswith("cannot boot: no such kernel: '/nonexistent'")
