"""Run the benchmarks: `python -m bench [name ...]` (all but the on-request ones by default), or one with its
options: `python -m bench recovery --jobs 20000`. Each prints its figures and writes
bench/results/<name>.json. They start their own broker unless KSCHED_BOOTSTRAP_SERVERS is set."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "tick_cost": [],
    "state_bytes": ["--baseline"],
    "firing_lag": ["--slots", "600"],
    "firing_lag_100": ["--due", "100", "--slots", "600"],
    "throughput": [],
    "dag": [],
    "status_read": [],
    "spawn": [],
    "recovery": [],
    "airflow": [],
}
#: Run only when named (`./dev bench recovery`): minutes each (airflow: ~10, and installs Airflow the first time).
ON_REQUEST = {"recovery", "airflow"}


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[0] in BENCHES and argv[1].startswith("-"):  # one bench with its own options
        module = "firing_lag" if argv[0].startswith("firing_lag") else argv[0]
        importlib.import_module(f"bench.{module}").main(argv[1:])
        return
    names = argv or [n for n in BENCHES if n not in ON_REQUEST]
    for name in names:
        module = "firing_lag" if name.startswith("firing_lag") else name
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}")
        print(f"== {name}", file=sys.stderr, flush=True)
        importlib.import_module(f"bench.{module}").main(BENCHES[name])


if __name__ == "__main__":
    main(sys.argv[1:])
