"""``capstan test``: boot an image, wait for console patterns, check its exit status.

A case boots one instance, reads its console log while the guest runs and ends
as soon as its verdict is known:

- a ``reject`` pattern or a crash marker on the console fails it at once;
- with no ``exit``, it passes once every ``expect`` pattern has appeared, in order
  (the guest is then stopped); a guest that ends first must have ended cleanly;
- with ``exit``, the guest must end by itself with that status (OSv's report, as
  ``capstan run`` reads it) after every pattern has appeared;
- past ``timeout`` it fails.

Whatever happened, the instance is stopped and deleted. While the guest runs,
patterns see only complete lines (a half-written line cannot match early).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from capstan.core.config import Config
from capstan.core.errors import CapstanError, GuestFailure
from capstan.drivers.base import Capability, Driver, console_verdict
from capstan.services.instances import RunRequest, create_instance, driver_for, make_spec
from capstan.services.testcases import Case, load_cases, single_case

__all__ = ["Case", "Outcome", "Suite", "junit_xml", "load_cases", "run_cases", "single_case",
           "write_junit"]

#: seconds a finished case's guest gets to power off before it is stopped hard
STOP_GRACE = 3.0
#: seconds between two reads of a running guest's console
POLL = 0.1
#: console bytes a failure keeps for its report (the end of the log)
TAIL_BYTES = 64 << 10


@dataclass(frozen=True)
class Outcome:
    """How one case ended."""

    name: str
    passed: bool
    seconds: float
    reason: str = ""  # why it failed; empty when it passed
    status: int | None = None  # the guest's exit status, when it ended by itself
    console: str = ""  # the end of its console output


@dataclass(frozen=True)
class Suite:
    """Every case's outcome, in the order of the cases."""

    outcomes: tuple[Outcome, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        """Whether every case passed."""
        return all(o.passed for o in self.outcomes)

    def summary(self) -> str:
        """``N passed, M failed in S s``."""
        failed = sum(not o.passed for o in self.outcomes)
        return (f"{len(self.outcomes) - failed} passed, {failed} failed "
                f"in {self.seconds:.1f} s")


@dataclass
class _Watch:
    """The console of a running case and how far its patterns have matched."""

    case: Case
    text: str = ""
    position: int = 0  # where the next expected pattern is looked for
    matched: int = 0  # expected patterns seen so far
    failure: str = ""
    status: int | None = None
    done: bool = False

    @property
    def waiting_for(self) -> str:
        """The next expected pattern, as /regex/."""
        return f"/{self.case.expect[self.matched].pattern}/"

    def feed(self, text: str, ended: bool) -> None:
        """Judge the console *text* so far (*ended*: the guest has stopped)."""
        self.text = text
        visible = text if ended else text[:text.rfind("\n") + 1]
        for pattern in self.case.reject:
            found = pattern.search(visible)
            if found:
                self._fail(f"rejected /{pattern.pattern}/ seen: {found.group(0)[:80]!r}")
                return
        self._crashed(visible)
        while not self.done and self.matched < len(self.case.expect):
            found = self.case.expect[self.matched].search(visible, self.position)
            if found is None:
                break
            self.position, self.matched = found.end(), self.matched + 1
        if not self.done and ended:
            self._judge_end(visible)
        elif not self.done and self.matched == len(self.case.expect) \
                and self.case.exit is None and self.case.expect:
            self.done = True

    def _crashed(self, visible: str) -> None:
        try:
            self.status = console_verdict(self.case.name, visible.encode())
        except GuestFailure as err:
            self._fail(str(err))

    def _judge_end(self, visible: str) -> None:
        """The guest ended: every pattern must have appeared, with the right status."""
        self.done = True
        if self.matched < len(self.case.expect):
            self.failure = f"the guest ended before {self.waiting_for} appeared"
            return
        wanted = 0 if self.case.exit is None else self.case.exit
        if self.status != wanted:
            self.failure = f"exit status {self.status}, expected {wanted}"

    def _fail(self, reason: str) -> None:
        self.failure, self.done = reason, True


def run_case(config: Config, case: Case, *, hypervisor: str | None = None,
             cancel: threading.Event | None = None) -> Outcome:
    """Boot *case*, judge it, stop and delete its instance."""
    started = time.monotonic()
    driver = driver_for(config, hypervisor)
    name = f"capstan-test-{secrets.token_hex(4)}"
    try:
        driver.require(Capability.LOGS)
        spec = make_spec(config, case.image, name, RunRequest(
            memory=case.memory, cpus=case.cpus, execute=case.execute, boots=case.boots,
            envs=case.env, networking=case.networking, machine=case.machine,
            kernel=case.kernel))
        create_instance(driver, spec)
    except CapstanError as err:
        return Outcome(case.name, False, time.monotonic() - started, f"cannot boot: {err}")
    try:
        watch = _watch(driver, name, case, cancel or threading.Event())
    finally:
        _remove(driver, name)
    tail = watch.text[-TAIL_BYTES:]
    return Outcome(case.name, not watch.failure, time.monotonic() - started,
                   watch.failure, watch.status if watch.done else None, tail)


def _watch(driver: Driver, name: str, case: Case, cancel: threading.Event) -> _Watch:
    """Start *name* and read its console until *case*'s verdict is known."""
    watch = _Watch(case)
    try:
        driver.start(name)
    except CapstanError as err:
        watch.failure = f"cannot boot: {err}"
        return watch
    deadline = time.monotonic() + case.timeout
    while not watch.done:
        live = driver.get(name).state.live  # sampled before the read: nothing is missed
        watch.feed(driver.read_log(name).decode("utf-8", "replace"), ended=not live)
        if watch.done:
            break
        if cancel.is_set():
            watch.failure = "interrupted"
            break
        if time.monotonic() > deadline:
            what = watch.waiting_for if watch.matched < len(case.expect) else "the guest to end"
            watch.failure = f"timed out after {case.timeout:g} s waiting for {what}"
            break
        time.sleep(POLL)
    return watch


def _remove(driver: Driver, name: str) -> None:
    """Stop and delete the case's instance (a graceful stop first, briefly)."""
    try:
        if driver.get(name).state.live:
            driver.stop(name, timeout=STOP_GRACE)
    finally:
        driver.delete(name)


def run_cases(config: Config, cases: Sequence[Case], *, hypervisor: str | None = None,
              jobs: int = 1, progress: Callable[[Outcome], None] | None = None) -> Suite:
    """Run *cases*, *jobs* at a time; *progress* hears of each outcome as it comes.

    Ctrl-C ends the running cases (their instances deleted) and is re-raised.
    """
    started = time.monotonic()
    cancel = threading.Event()

    def one(case: Case) -> Outcome:
        outcome = run_case(config, case, hypervisor=hypervisor, cancel=cancel)
        if progress is not None:
            progress(outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="capstan-test")
    try:
        futures = [pool.submit(one, case) for case in cases]
        outcomes = tuple(f.result() for f in futures)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return Suite(outcomes, time.monotonic() - started)



_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """*text* with every character XML 1.0 cannot hold shown as ``\\xNN``."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def junit_xml(suite: Suite, name: str = "capstan test") -> bytes:
    """*suite* as a JUnit XML report (one ``testcase`` per case, a failed one with
    its reason and the end of its console)."""
    from xml.etree import ElementTree as ET

    failures = sum(not o.passed for o in suite.outcomes)
    root = ET.Element("testsuites", tests=str(len(suite.outcomes)), failures=str(failures),
                      errors="0", time=f"{suite.seconds:.3f}")
    top = ET.SubElement(root, "testsuite", name=name, tests=str(len(suite.outcomes)),
                        failures=str(failures), errors="0", skipped="0",
                        time=f"{suite.seconds:.3f}")
    for outcome in suite.outcomes:
        case = ET.SubElement(top, "testcase", classname="capstan",
                             name=_xml_text(outcome.name), time=f"{outcome.seconds:.3f}")
        if not outcome.passed:
            failure = ET.SubElement(case, "failure", message=_xml_text(outcome.reason),
                                    type="failure")
            failure.text = _xml_text(outcome.reason)
        out = ET.SubElement(case, "system-out")
        out.text = _xml_text(outcome.console)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def write_junit(suite: Suite, path: Path) -> None:
    """Write *suite*'s JUnit report to *path* (atomically)."""
    from capstan.core import fs

    try:
        fs.atomic_write(path, junit_xml(suite))
    except OSError as err:
        raise fs.write_error(path, err) from err
