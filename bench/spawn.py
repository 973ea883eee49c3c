"""What containing a job costs at start: create, run and reap a process that exits at once, N times, with the
executor's default isolation (bubblewrap PID namespace, a pool uid, hidden directories) and without it
(`--uncontained`), in the same run. Prints p50/p99 per start and the ratio. No Kafka.

Also what a job's default limits add to a start, uncontained: CPU per start (this process and its reaped children)
with the default limits and with none, started at once and created held then let go (either way the limits are
set by prlimit(2) while the process waits at its gate: started at once, it is let go right after; with no limits,
started at once, it has no gate)."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from ksched.executor.sandbox import BWRAP, Isolation, spawn
from ksched.schemas.events import Limits

from .common import pct, report


def measure(binary: Path, root: Path, n: int, isolation: Isolation | None) -> list[float]:
    times = []
    for i in range(n):
        workdir = root / f"w{i}"
        t = time.perf_counter()
        proc = spawn(binary, [], {"PATH": "/usr/bin:/bin"}, workdir, isolation=isolation)
        proc.popen.wait()
        proc.retire()
        times.append((time.perf_counter() - t) * 1000)
    return times


def cpu_per_start(binary: Path, root: Path, n: int, hold: bool, limits: Limits) -> dict[str, float]:
    """CPU ms per start with `limits`, uncontained, in this process and in the children."""
    def used() -> tuple[float, float]:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
    before = used()
    for i in range(n):
        proc = spawn(binary, [], {"PATH": "/usr/bin:/bin"}, root / f"w{i}", limits, hold=hold)
        if hold:
            proc.release()
        proc.popen.wait()
    after = used()
    return {"executor": (after[0] - before[0]) * 1000 / n, "children": (after[1] - before[1]) * 1000 / n}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench spawn")
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args(argv)
    if BWRAP is None or os.geteuid() != 0:
        print("spawn: needs bubblewrap and root (the executor's default isolation); skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cache").mkdir()
        binary = root / "cache" / "true.sh"
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o555)
        iso = Isolation.default((root,), pool_size=4)
        plain = measure(binary, root / "plain", args.n, None)
        contained = measure(binary, root / "contained", args.n, iso)
        cpu = {f"{how}_{name}": cpu_per_start(binary, root / f"{how}-{name}", args.n, how == "held", limits)
               for how in ("at_once", "held") for name, limits in (("no_limits", Limits(open_files=0)),
                                                                    ("default_limits", Limits()))}
    figures = {
        "starts": args.n,
        "uncontained_ms": {"p50": pct(plain, 50), "p99": pct(plain, 99)},
        "contained_ms": {"p50": pct(contained, 50), "p99": pct(contained, 99)},
        "ratio_p50": pct(contained, 50) / pct(plain, 50),
        "cpu_ms_per_start_uncontained": cpu,
        "default_limits_add_cpu_ms": {how: sum(cpu[f"{how}_default_limits"].values())
                                      - sum(cpu[f"{how}_no_limits"].values()) for how in ("at_once", "held")},
    }
    print(f"process start to reap, {args.n} each (ms): uncontained p50 {figures['uncontained_ms']['p50']:.1f} "
          f"p99 {figures['uncontained_ms']['p99']:.1f}; contained p50 {figures['contained_ms']['p50']:.1f} "
          f"p99 {figures['contained_ms']['p99']:.1f}; ratio p50 {figures['ratio_p50']:.2f}")
    added = figures["default_limits_add_cpu_ms"]
    print("CPU per start, uncontained (ms, executor + children): " + "; ".join(
        f"{k} {v['executor']:.2f} + {v['children']:.2f}" for k, v in cpu.items()))
    print(f"the default limits add (ms of CPU per start): at once {added['at_once']:.2f}, held {added['held']:.2f}")
    report("spawn", figures)
