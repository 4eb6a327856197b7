"""Time for a 16-instance fleet to reach running, divided by the time for one.

Both are `capstan up` of a fleet file (probe guests that halt after their
report, private network on), measured alternately three times each in this one
run; `capstan down` runs between them, untimed. Target: ratio <= 1.5.

For scale, bare QEMU is timed the same way: 1 and 16 processes with the argv
capstan recorded, started at once, until every QMP monitor has greeted. With
fewer cores than instances, QEMU's start-up (about 30 ms of CPU each here) and
the guests' boot under TCG (about 50 ms each) share the cores, so the 15 extra
instances cost at least 15 x 80 ms / cores whatever launches them.

Two hosts: time to all-running for 16 instances, 8 on each of two hosts (local QEMU and
libvirt at qemu:///system, or a second QEMU host when libvirtd does not answer), against
8 on one host; medians and every sample are printed, no target (on one machine the two
hosts share its cores, so this measures what the fleet adds, not a second machine's
capacity).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CAPSTAN, capstan_env, probe_image

FLEET = """\
name: bench{count}
services:
  node:
    image: app.qcow2
    count: {count}
    memory: 64M
    command: /node @deaf
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        work = Path(tmp)
        env = capstan_env(work / "root", CAPSTAN_QEMU_ACCEL="tcg")
        probe_image(work, env)
        for count in (1, 16):
            (work / f"f{count}.yaml").write_text(FLEET.format(count=count))

        def up(count: int) -> float:
            fleet = ["-F", str(work / f"f{count}.yaml")]
            start = time.perf_counter()
            subprocess.run([*CAPSTAN, "up", *fleet], env=env, check=True, capture_output=True)
            elapsed = time.perf_counter() - start
            subprocess.run([*CAPSTAN, "down", "-t", "0.2", *fleet], env=env, check=True,
                           capture_output=True)
            return elapsed

        up(1)  # warm the image cache
        argvs = recorded_argvs(work, env)
        one, many, bare_one, bare_many = [], [], [], []
        for _ in range(3):
            one.append(up(1))
            many.append(up(16))
            bare_one.append(bare(work, argvs[:1]))
            bare_many.append(bare(work, argvs))
        t1, t16 = statistics.median(one), statistics.median(many)
        b1, b16 = statistics.median(bare_one), statistics.median(bare_many)
        print(f"capstan up, 1 instance:   median {t1 * 1000:.0f} ms")
        print(f"capstan up, 16 instances: median {t16 * 1000:.0f} ms")
        print(f"bare QEMU, 1 / 16 at once: median {b1 * 1000:.0f} / {b16 * 1000:.0f} ms")
        print(f"15 more instances add: capstan {(t16 - t1) * 1000:.0f} ms, "
              f"bare QEMU {(b16 - b1) * 1000:.0f} ms (until QMP greets, before the guests run)")
        print(f"ratio: {t16 / t1:.2f} (target <= 1.5) on {os.cpu_count()} cores")
        two_hosts(work, env)


TWO_HOSTS = """\
name: duo{count}
private_network: false
hosts:
  a: {{driver: qemu}}
  b: {second}
services:
  node:
    image: app.qcow2
    count: {per_host}
    memory: 64M
    command: /node @deaf
    host: a
"""
ON_B = """\
  other:
    image: app.qcow2
    count: {per_host}
    memory: 64M
    command: /other @deaf
    host: b
"""


def two_hosts(work: Path, env: dict[str, str]) -> None:
    """Print the medians and samples of ``up`` for 8 on one host and 16 on two."""
    libvirt = subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                             capture_output=True, check=False).returncode == 0
    second = ("{driver: libvirt, libvirt_uri: 'qemu:///system'}" if libvirt
              else "{driver: qemu}")
    if libvirt:  # libvirt's QEMU runs as another user: it must pass our directories
        for d in (work, *work.parents):
            d.chmod(d.stat().st_mode | 0o001)
    one = TWO_HOSTS.format(count=8, per_host=8, second=second)
    both = TWO_HOSTS.format(count=16, per_host=8, second=second) + ON_B.format(per_host=8)
    (work / "one-host.yaml").write_text(one)
    (work / "two-hosts.yaml").write_text(both)

    def up(name: str) -> float:
        fleet = ["-F", str(work / name)]
        start = time.perf_counter()
        done = subprocess.run([*CAPSTAN, "up", *fleet], env=env, check=False,
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        subprocess.run([*CAPSTAN, "down", "-t", "0.2", *fleet], env=env, check=True,
                       capture_output=True)
        if done.returncode:
            raise SystemExit(f"capstan up {name} failed:\n{done.stdout}{done.stderr}")
        return elapsed

    samples: dict[str, list[float]] = {"one-host.yaml": [], "two-hosts.yaml": []}
    for _ in range(3):
        for name, times in samples.items():
            times.append(up(name))
    kind = "QEMU + libvirt" if libvirt else "QEMU + QEMU"
    for name, label in (("one-host.yaml", "8 on one host"),
                        ("two-hosts.yaml", f"16 on two hosts ({kind})")):
        times = samples[name]
        shown = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"capstan up, {label}: median {statistics.median(times) * 1000:.0f} ms "
              f"(samples {shown} ms)")


def recorded_argvs(work: Path, env: dict[str, str]) -> list[list[str]]:
    """The QEMU argv of each of 16 fleet instances, pointed at scratch files."""
    fleet = ["-F", str(work / "f16.yaml")]
    subprocess.run([*CAPSTAN, "up", *fleet], env=env, check=True, capture_output=True)
    argvs = []
    for n, state in enumerate(sorted((work / "root" / "instances" / "qemu")
                                     .glob("*/instance.json"))):
        record = json.loads(state.read_text())
        scratch = work / f"bare{n}"
        scratch.mkdir()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(work / "app.qcow2"), str(scratch / "disk.qcow2")], check=True)
        moves = {record[k]: str(scratch / Path(record[k]).name)
                 for k in ("disk", "qmp", "console", "console_log")}
        argv = []
        for arg in record["argv"]:
            for old, new in moves.items():
                arg = arg.replace(old, new)
            argv.append(arg)
        argvs.append(argv)
    subprocess.run([*CAPSTAN, "down", "-t", "0.2", *fleet], env=env, check=True,
                   capture_output=True)
    return argvs


def bare(work: Path, argvs: list[list[str]]) -> float:
    """Seconds until every QEMU started with *argvs* (all at once) greets on QMP."""
    sockets = [next(a.split(",")[0].removeprefix("unix:") for a in argv if a.startswith("unix:"))
               for argv in argvs]
    for path in sockets:
        Path(path).unlink(missing_ok=True)
    start = time.perf_counter()
    children = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for argv in argvs]
    for path in sockets:
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    s.recv(4096)  # the greeting
                    break
                except OSError:
                    time.sleep(0.005)
    elapsed = time.perf_counter() - start
    for child in children:
        child.kill()
        child.wait()
    return elapsed


if __name__ == "__main__":
    main()
