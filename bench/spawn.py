"""What containing a job costs at start: create, run and reap a process that exits at once, N times, with the
executor's default isolation (bubblewrap PID namespace, a pool uid, hidden directories) and without it
(`--uncontained`), in the same run. Prints p50/p99 per start and the ratio. No Kafka."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from ksched.executor.sandbox import BWRAP, Isolation, spawn

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
    figures = {
        "starts": args.n,
        "uncontained_ms": {"p50": pct(plain, 50), "p99": pct(plain, 99)},
        "contained_ms": {"p50": pct(contained, 50), "p99": pct(contained, 99)},
        "ratio_p50": pct(contained, 50) / pct(plain, 50),
    }
    print(f"process start to reap, {args.n} each (ms): uncontained p50 {figures['uncontained_ms']['p50']:.1f} "
          f"p99 {figures['uncontained_ms']['p99']:.1f}; contained p50 {figures['contained_ms']['p50']:.1f} "
          f"p99 {figures['contained_ms']['p99']:.1f}; ratio p50 {figures['ratio_p50']:.2f}")
    report("spawn", figures)
