"""Shared helpers for benchmarks: percentiles, result files, a private installation on a broker."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": max(values, default=0.0),
            "mean": statistics.fmean(values) if values else float("nan")}


def report(name: str, figures: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    figures = {"bench": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


@contextmanager
def broker() -> Iterator[str]:
    """KSCHED_BOOTSTRAP_SERVERS if set, else a fresh local broker for the benchmark."""
    if os.environ.get("KSCHED_BOOTSTRAP_SERVERS"):
        yield os.environ["KSCHED_BOOTSTRAP_SERVERS"]
        return
    import tempfile

    from ksched import devbroker

    with tempfile.TemporaryDirectory(prefix="ksched-bench-") as d:
        info = devbroker.up(Path(d) / "broker", heap_mb=1024)
        try:
            yield info.bootstrap
        finally:
            devbroker.down(Path(d) / "broker")
