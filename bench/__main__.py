"""Run the benchmarks: `python -m bench [name ...]` (all by default). Each prints its figures and writes
bench/results/<name>.json. They start their own broker unless KSCHED_BOOTSTRAP_SERVERS is set."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "tick_cost": [],
    "firing_lag": ["--slots", "600"],
    "firing_lag_100": ["--due", "100", "--slots", "600"],
    "throughput": [],
    "dag": [],
    "spawn": [],
}


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    for name in names:
        module = "firing_lag" if name.startswith("firing_lag") else name
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}")
        print(f"== {name}", file=sys.stderr, flush=True)
        importlib.import_module(f"bench.{module}").main(BENCHES[name])


if __name__ == "__main__":
    main(sys.argv[1:])
