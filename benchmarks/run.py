"""Time from `capstan run` to the guest's first serial byte, minus bare QEMU's.

Both start the same probe image with the same QEMU argv (the one capstan
records in instance.json), alternately, ROUNDS times each, in this one run;
the medians are compared.
Also prints the start-up time of `capstan --help` and `capstan instances`.
Targets: overhead <= 100 ms; --help <= 150 ms; instances <= 200 ms.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CAPSTAN, capstan_env, probe_image

ROUNDS = 11


def first_byte(log: Path, start: float, timeout: float = 30) -> float:
    while time.perf_counter() - start < timeout:
        if log.exists() and log.stat().st_size > 0:
            return time.perf_counter() - start
        time.sleep(0.001)
    raise RuntimeError(f"no serial output in {log}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="capstan-bench-") as tmp:
        work = Path(tmp)
        env = capstan_env(work / "root", CAPSTAN_QEMU_ACCEL="tcg")
        image = probe_image(work, env)
        ours, bare = [], []
        for n in range(ROUNDS):
            name = f"b{n}"
            inst = work / "root" / "instances" / "qemu" / name
            start = time.perf_counter()
            run = subprocess.Popen([*CAPSTAN, "run", "-d", "-i", str(image), "-e", "/x @hold",
                                    name], env=env, stdout=subprocess.DEVNULL)
            ours.append(first_byte(inst / "console.log", start))  # polled while run runs
            if run.wait() != 0:
                raise RuntimeError("capstan run failed")
            state = json.loads((inst / "instance.json").read_text())
            subprocess.run([*CAPSTAN, "delete", name], env=env, check=True, capture_output=True)

            log = work / f"bare{n}.log"
            argv = [a.replace(state["console_log"], str(log)) for a in state["argv"]]
            argv = [a.replace(state["qmp"], str(work / f"q{n}.sock")) for a in argv]
            argv = [a.replace(state["console"], str(work / f"c{n}.sock")) for a in argv]
            inst.mkdir()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(image), state["disk"]], check=True)
            start = time.perf_counter()
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bare.append(first_byte(log, start))
            child.kill()
            child.wait()
            shutil.rmtree(inst, ignore_errors=True)

        def startup(*args: str) -> float:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                subprocess.run([*CAPSTAN, *args], env=env, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        overhead = (statistics.median(ours) - statistics.median(bare)) * 1000
        print(f"capstan run -> first serial byte: median {statistics.median(ours) * 1000:.0f} ms")
        print(f"bare qemu   -> first serial byte: median {statistics.median(bare) * 1000:.0f} ms")
        print(f"overhead: {overhead:.0f} ms (target <= 100 ms)")
        print(f"capstan --help: {startup('--help') * 1000:.0f} ms (target <= 150 ms)")
        print(f"capstan instances: {startup('instances') * 1000:.0f} ms (target <= 200 ms)")


if __name__ == "__main__":
    main()
