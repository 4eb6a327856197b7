"""Compose through the installed CLI, the way users do, against cp -r + qemu-img convert.

A generated application package (~200 MiB in ~800 files) requires a runtime package
(~20 MiB in ~50 files) and osv.bootstrap, both imported into a fresh $CAPSTAN_ROOT. Timed,
alternating, each after a ``sync``, every sample printed with the medians:

- ``capstan package compose`` of the application (packages merged in memory);
- ``capstan compose`` of the same merged tree, as a plain directory, to the same output
  each round (updating the previous image) and to a new file (writing all of it);
- the reference: ``cp -r`` of that tree plus ``qemu-img convert -O qcow2`` of a raw image
  of the same size and bytes, on the same filesystem;
- ``capstan compose`` again after one file of the tree changed (the recompose);
- ``capstan package compose`` of a hello-world package;
- ``capstan --version``: the CLI's start-up alone, part of every figure above.

Peak RSS of each capstan process comes from ``wait4``. Targets (issue 16): package compose
<= 1.0x the reference, plain compose <= 0.7x, recompose <= 0.3 s, RSS <= 64 MB, hello world
<= 0.25 s. ``--smoke`` runs the same steps on a tiny tree once (for the test suite);
``--cold`` (root) also drops the page cache before each sample, so that every command
reads its input from the disk.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import capstan_env

CAPSTAN = [str(Path(sys.executable).with_name("capstan"))]  # the installed console script
MIB = 1 << 20
COLD = False  # --cold


@dataclass
class Sizes:
    """How big the generated application and runtime are, and how many rounds."""

    app_files: int = 800
    app_bytes: int = 180 * MIB
    lib_files: int = 50
    lib_bytes: int = 20 * MIB
    rounds: int = 5


@dataclass
class Series:
    """Timed samples of one command and the peak RSS its processes reached."""

    name: str
    times: list[float] = field(default_factory=list)
    rss_kib: int = 0

    def line(self) -> str:
        samples = ", ".join(f"{t:.3f}" for t in self.times)
        return (f"{self.name}: median {statistics.median(self.times):.3f} s, "
                f"peak RSS {self.rss_kib / 1024:.1f} MiB ({samples})")


def fill(root: Path, files: int, total: int, seed: int) -> None:
    """*files* incompressible files of pareto-distributed sizes, *total* bytes in all."""
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.2) for _ in range(files)]
    scale = total / sum(weights)
    for n, w in enumerate(weights):
        d = root / f"d{n % 20:02d}" / f"s{n % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{n:05d}.bin").write_bytes(rng.randbytes(max(1, int(w * scale))))


def package(root: Path, name: str, require: list[str], run: str | None = None) -> Path:
    """A package directory *root* named *name*."""
    (root / "meta").mkdir(parents=True, exist_ok=True)
    req = "".join(f"\n  - {r}" for r in require)
    (root / "meta" / "package.yaml").write_text(
        f"name: {name}\ntitle: {name}\nauthor: bench\n" + (f"require:{req}\n" if req else ""))
    if run:
        (root / "meta" / "run.yaml").write_text(
            f"runtime: native\nconfig_set:\n  default:\n    bootcmd: {run}\n")
    return root


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run *argv* after a sync; its wall time and peak RSS in KiB (from GNU time: a forked
    child's own ru_maxrss would start at this process's peak)."""
    os.sync()
    if COLD:  # every byte read from the disk, not the page cache
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        took = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{argv[:3]} failed: {done.stderr.decode(errors='replace')}")
        return took, int(rss.read().split()[-1])


def sample(series: Series, step: Callable[[], tuple[float, int]]) -> None:
    took, rss = step()
    series.times.append(took)
    series.rss_kib = max(series.rss_kib, rss)


def setup(work: Path, sizes: Sizes, env: dict[str, str]) -> tuple[Path, Path]:
    """Import the packages, generate the application; return it and its merged tree."""
    boot = package(work / "bootstrap", "osv.bootstrap", [])
    (boot / "etc").mkdir()
    (boot / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    lib = package(work / "runtime", "bench.runtime", [])
    fill(lib / "usr" / "lib" / "bench", sizes.lib_files, sizes.lib_bytes, seed=7)
    for pkg in (boot, lib):
        run([*CAPSTAN, "package", "import", "-C", str(pkg)], env)
    app = package(work / "app", "bench.app", ["osv.bootstrap", "bench.runtime"], "/app/run")
    fill(app / "app", sizes.app_files, sizes.app_bytes, seed=42)
    (app / "app" / "run").write_bytes(b"#!/bin/true\n")
    merged = work / "merged"  # the same files as a plain tree: what `capstan compose` takes
    shutil.copytree(app, merged, ignore=shutil.ignore_patterns("meta"))
    shutil.copytree(boot / "etc", merged / "etc", dirs_exist_ok=True)
    shutil.copytree(lib / "usr", merged / "usr")
    (merged / "run").mkdir()
    (merged / "run" / "default").write_text("/app/run\n")
    return app, merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny tree, one round")
    parser.add_argument("--dir", default="/var/tmp", help="where to work (one filesystem)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the page cache before each sample (root)")
    args = parser.parse_args()
    global COLD
    COLD = args.cold
    sizes = Sizes(40, 2 * MIB, 5, MIB, 1) if args.smoke else Sizes()
    with tempfile.TemporaryDirectory(prefix="capstan-bench-", dir=args.dir) as tmp:
        bench(Path(tmp), sizes)


def bench(work: Path, sizes: Sizes) -> None:
    env = capstan_env(work / "root")
    app, merged = setup(work, sizes, env)
    out = work / "out"
    out.mkdir()
    pkg = [*CAPSTAN, "package", "compose", "-C", str(app), "-l", "probe-loader"]
    plain = [*CAPSTAN, "compose", "-l", "probe-loader"]
    raw = out / "same.raw"
    run([*plain, "--disk-format", "raw", "-o", str(raw), str(merged)], env)

    def reference() -> tuple[float, int]:
        shutil.rmtree(out / "copy", ignore_errors=True)
        a = run(["cp", "-r", str(merged), str(out / "copy")])
        b = run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                 str(out / "ref.qcow2")])
        return a[0] + b[0], max(a[1], b[1])

    ref, by_pkg = Series("cp -r + qemu-img convert"), Series("capstan package compose")
    by_tree, again = Series("capstan compose"), Series("capstan compose after a 1-file change")
    cold = Series("capstan compose to a new file (no previous image to update)")
    changed = sorted((merged / "app").rglob("*.bin"))[3]
    for n in range(sizes.rounds):
        sample(by_pkg, lambda: run([*pkg, "-o", str(out / "pkg.qcow2")], env))
        sample(ref, reference)
        sample(by_tree, lambda: run([*plain, "-o", str(out / "tree.qcow2"), str(merged)], env))
        new = out / f"new{n}.qcow2"
        sample(cold, lambda: run([*plain, "-o", str(new), str(merged)], env))  # noqa: B023
        new.unlink()
        data = bytearray(changed.read_bytes())
        data[0] = n & 0xFF
        changed.write_bytes(bytes(data))
        sample(again, lambda: run([*plain, "-o", str(out / "tree.qcow2"), str(merged)], env))
    hello = hello_series(work, env, sizes.rounds)
    start = Series("capstan --version (start-up alone)")
    for _ in range(sizes.rounds):
        sample(start, lambda: run([*CAPSTAN, "--version"], env))
    report(sizes, [by_pkg, by_tree, cold, ref, again, hello, start], ref)


def hello_series(work: Path, env: dict[str, str], rounds: int) -> Series:
    """``capstan package compose`` of a 1 MiB hello-world package."""
    hello = package(work / "hello", "hello", ["osv.bootstrap"], "/hello")
    (hello / "hello").write_bytes(random.Random(1).randbytes(MIB))
    series = Series("hello-world package compose")
    for _ in range(rounds):
        sample(series, lambda: run([*CAPSTAN, "package", "compose", "-C", str(hello), "-l",
                                    "probe-loader", "-o", str(work / "hello.qcow2")], env))
    return series


def report(sizes: Sizes, series: list[Series], ref: Series) -> None:
    files = sizes.app_files + sizes.lib_files
    print(f"application: {files} files, {(sizes.app_bytes + sizes.lib_bytes) / MIB:.0f} MiB "
          f"(runtime package {sizes.lib_files} files, {sizes.lib_bytes / MIB:.0f} MiB); "
          f"{sizes.rounds} rounds, alternating, sync{' + cold cache' if COLD else ''} before each")
    base = statistics.median(ref.times)
    for s in series:
        ratio = statistics.median(s.times) / base
        print(f"  {s.line()}" + ("" if s is ref else f"; {ratio:.2f}x the reference"))
    print("targets: package compose <= 1.0x, compose <= 0.7x, recompose <= 0.3 s, "
          "RSS <= 64 MiB, hello world <= 0.25 s")
    print("load average after the run: " + ", ".join(f"{n:.1f}" for n in os.getloadavg()))


if __name__ == "__main__":
    main()
