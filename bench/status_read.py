"""What `ksched status JOB` costs for a job with a short history and for one with a long one.

A broker, one streams worker with its API, two jobs: one with `--small` runs (10), one with `--big` runs (10,000),
each run triggered and cancelled (no executor needed; every run is finished and has views). Then, for each job,
the status read both ways, in the same run:
  - through the API (KSCHED_API_URL): the job's owner answers from its table (what `ksched status` does now);
  - from the views topics (`ksched status` without KSCHED_API_URL, and what it always did before): a scan of the
    job's partition of `runs` and `tasks`, which the retention (KSCHED_KEEP_RUN_VIEWS) trims with tombstones,
    but which holds every superseded record until Kafka's log cleaner has compacted it.
Prints p50/p99 per read and the big/small ratio of each (target for the status read: within 2x).

    python -m bench status_read [--small 10] [--big 10000]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ksched import kafka
from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.reader import api_job_status, job_status
from ksched.schemas.codec import default_codec
from ksched.schemas.events import CancelRun, TriggerJob
from ksched.topics import submit_topic
from tests.support import Cluster, write_job, write_script

from .common import broker, report, summary


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_runs(s: Settings, job_id: str, n: int) -> None:
    """n runs of the job, each triggered and cancelled at once (both commands produced in bulk)."""
    codec = default_codec()
    producer = kafka.producer(s)
    topic, p = submit_topic(s), partition_for(job_id, s.partitions)
    now = int(time.time() * 1000)
    for i in range(n):
        command = f"b{i:06d}"
        for event in (TriggerJob(command, job_id, now), CancelRun(f"{command}-x", job_id, f"{job_id}@manual-{command}",
                                                                  now, "bench")):
            producer.produce(topic, codec.encode(event), job_id.encode(), partition=p)
            producer.poll(0)
    producer.flush(60)


def timed(fn: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench status_read")
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--reads", type=int, default=20)
    args = ap.parse_args(argv)
    port = _port()
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ksched-status-") as tmp:
        s = Settings(bootstrap_servers=bootstrap, prefix=f"st{uuid.uuid4().hex[:6]}", home=Path(tmp),
                     partitions=3, ready_partitions=3, control_partitions=1, api_url=f"http://127.0.0.1:{port}")
        cluster = Cluster(s)
        cluster.streams("w0", web_port=port)
        write_script(Path(tmp) / "noop.sh", "exit 0\n")
        figures: dict[str, object] = {"runs": {"small": args.small, "big": args.big}}
        try:
            for job in ("small", "big"):  # yearly: never fires by itself while the bench runs
                r = cluster.ksched("submit", str(write_job(Path(tmp), job, f"job: {job}\nschedule: '0 0 1 1 *'\n"
                                                           "binary: noop.sh\n")), "--wait", "--timeout", "120")
                assert r.returncode == 0, r.stderr
            t0 = time.monotonic()
            make_runs(s, "small", args.small)
            make_runs(s, "big", args.big)
            cluster.drain_inbox(timeout=600)
            figures["make_runs_s"] = round(time.monotonic() - t0, 1)
            views_held = {job: len(job_status(s, job).runs) for job in ("small", "big")}
            api_held = {job: len(api_job_status(s, job).runs) for job in ("small", "big")}
            figures["runs_with_views"], figures["runs_in_owner_table"] = views_held, api_held
            print(f"made {args.small} + {args.big} runs in {figures['make_runs_s']} s; runs with views {views_held}, "
                  f"held by the owner {api_held}", file=sys.stderr)
            for path, fn, reads in (("api", api_job_status, args.reads), ("views", job_status, 5)):
                per = {job: summary(timed(lambda j=job, f=fn: f(s, j), reads)) for job in ("small", "big")}
                ratio = per["big"]["p50"] / per["small"]["p50"]
                figures[path] = {**per, "ratio_big_to_small_p50": ratio}
                print(f"status via {path:<5}: small p50 {per['small']['p50']:7.1f} ms p99 {per['small']['p99']:7.1f}"
                      f" | big p50 {per['big']['p50']:7.1f} ms p99 {per['big']['p99']:7.1f} | ratio {ratio:.2f}")
        finally:
            cluster.stop()
        report("status_read", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
