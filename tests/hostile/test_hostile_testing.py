"""Hostile capstan test inputs: a case file, patterns, statuses and a guest's console are
checked before anything boots or reaches the JUnit report, in one line (64 for the command
line, 65 for a file), and nothing outside the sandbox changes."""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.services.testing import Outcome, Suite, junit_xml

from hostile_kit import Sandbox, check


@pytest.mark.parametrize(("args", "text"), [
    (("--expect", "(unclosed"), "invalid regular expression '(unclosed'"),
    (("--reject", "x" * 1001), "longer than 1000"),
    (("--exit", "256"), "exit: expected a status 0-255"),
    (("--exit", "-1"), "exit: expected a status 0-255"),
    (("--timeout", "nan"), "timeout: expected seconds"),
    (("--timeout", "0"), "timeout: expected seconds"),
    (("--timeout", "1e999"), "timeout: expected seconds"),
    (("-j", "0"), "invalid --jobs 0"),
])
def test_bad_command_line(cli, sandbox: Sandbox, args: tuple[str, ...], text: str) -> None:
    check(cli("test", "some-image", *args), 64, text)


def test_no_image_and_no_file(cli, sandbox: Sandbox, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check(cli("test"), 65, "no such file: capstan-tests.yaml")


@pytest.mark.parametrize(("text", "message"), [
    ("tests: []\n", "needs 1 to 1000 cases"),
    ("- a\n", "expected a mapping with a 'tests:' list"),
    ("tests: {a: 1}\n", "expected a mapping with a 'tests:' list"),
    ("image: x\ntests: [{expect: a, shell: 'rm -rf /'}]\n", "tests[1]: unknown key 'shell'"),
    ("image: x\ntests: [nope]\n", "tests[1]: expected a mapping"),
    ("image: x\ntests: [{exit: true}]\n", "exit: expected a status 0-255, not True"),
    ("image: x\ntests: [{exit: 3.5}]\n", "exit: expected a status"),
    ("image: x\ntests: [{name: \"a\\nb\"}]\n", "invalid name"),
    ("image: x\ntests: [{name: a}, {name: a}]\n", "two cases are named 'a'"),
    ("image: x\ntests: [{expect: [{a: 1}]}]\n", "expect: expected a string"),
    ("image: x\ntests: [{timeout: -5}]\n", "timeout: expected seconds"),
    ("image: x\ntests: [{networking: bridge}]\n", "networking: one of nat, none"),
    ("image: x\ntests: [{cpus: 0}]\n", "cpus: expected a positive whole number"),
    ("tests: [{expect: a}]\n", "no image"),
    ("image: x\ntests: [{}]\ntests: [{}]\n", "tests"),
])
def test_bad_case_file(cli, sandbox: Sandbox, tmp_path: Path, text: str, message: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    check(cli("test", "--tests", cases), 65, message)


def test_case_options_belong_in_the_file(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("image: x\ntests: [{}]\n")
    check(cli("test", "--tests", cases, "--expect", "a"), 64, "--expect describes one case")


def test_a_fifo_case_file_is_refused(cli, sandbox: Sandbox, tmp_path: Path) -> None:
    fifo = tmp_path / "cases.yaml"
    os.mkfifo(fifo)
    check(cli("test", "--tests", fifo), 65, "not a regular file")


@pytest.mark.qemu
def test_unknown_image_fails_the_case_not_the_run(cli, sandbox: Sandbox) -> None:
    done = cli("test", "../../outside/victim-image", "--expect", "x")
    assert done.code == 1 and "cannot boot" in done.out and "Traceback" not in done.err


@settings(max_examples=40, deadline=None)
@given(console=st.text(), reason=st.text(max_size=50), name=st.text(min_size=1, max_size=20))
def test_junit_holds_any_console(console: str, reason: str, name: str) -> None:
    """A guest's console (control characters, lone surrogates, ``]]>``) and a case's name
    never break the report: it parses, and says what failed."""
    suite = Suite((Outcome(name, False, 1.0, reason, 3, console + "]]><x>"),), 1.0)
    root = ET.fromstring(junit_xml(suite))
    case = root.find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None
    assert "]]><x>" in (case.findtext("system-out") or "")


@pytest.mark.qemu
def test_junit_to_a_directory_is_one_line(cli, sandbox: Sandbox, image: Path) -> None:
    check(cli("test", image, "--exit", "0", "--junit", sandbox.outside / "dir"),
          74, "cannot write")
