"""Run one streams worker process (`ksched streams`).

A worker's local RocksDB files are kept after a clean shutdown; after a crash, a partition's store is kept only
if this worker was the last to commit that partition's inputs, and rebuilt from the changelog otherwise
(`streams.localstate`).
"""

from __future__ import annotations

import cProfile
import gc
import logging
import os
import sys
from dataclasses import replace

from ksched.config import Settings
from ksched.kafka import session_timeout_floor_s
from ksched.topics import ensure_topics

from .app import create_app
from .localstate import CLEAN_MARKER, prepare_datadir

log = logging.getLogger(__name__)


#: The collector's thresholds in a worker: Python's (700, 10, 10) run a young collection every 700 new containers,
#: and a worker deciding submissions makes a few hundred per job, so registering spent about a sixth of its
#: time collecting (measured in process: 1,756-1,856 jobs/s with the default, 2,142-2,236 with these). The
#: worker's garbage is mostly acyclic (freed by reference counting), so collecting less often holds little more.
GC_THRESHOLDS = (50_000, 20, 100)

#: Kafka's own `group.min.session.timeout.ms`, assumed when the brokers' cannot be read.
KAFKA_SESSION_FLOOR_S = 6.0


def session_within_floor(settings: Settings, floor_s: float | None) -> Settings:
    """A session timeout below what the brokers accept would keep the worker out of its group for good (the
    join is refused): it is raised to the brokers' floor (Kafka's default floor when theirs cannot be read),
    with a warning saying what failover then costs."""
    floor = KAFKA_SESSION_FLOOR_S if floor_s is None else floor_s
    if settings.session_timeout_s >= floor:
        return settings
    known = "" if floor_s is not None else " (Kafka's default: this worker may not read the brokers' configs)"
    log.warning("KSCHED_SESSION_TIMEOUT_S=%s is below the brokers' group.min.session.timeout.ms%s: using %s s, so "
                "a dead worker's partitions move only that long after it dies; lower that floor on the brokers "
                "for a faster failover", settings.session_timeout_s, known, floor)
    return replace(settings, session_timeout_s=floor)


def run(settings: Settings, name: str = "worker", web_port: int | None = None, loglevel: str = "warning",
        web_host: str = "127.0.0.1", web_url: str | None = None) -> int:
    import faust

    gc.set_threshold(*GC_THRESHOLDS)
    ensure_topics(settings)
    settings = session_within_floor(settings, session_timeout_floor_s(settings))
    datadir = settings.home / "streams" / name
    prepare_datadir(datadir, settings)
    streams = create_app(settings, worker_name=name, datadir=datadir, web_port=web_port, web_host=web_host,
                         web_url=web_url)
    worker = faust.Worker(streams.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    code = 1
    profile = os.environ.get("KSCHED_PROFILE")  # a path: write cProfile stats there on exit (benchmarks)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else 1
    finally:
        streams.close()
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
    if code == 0:
        (datadir / CLEAN_MARKER).write_text("ok\n")
    return code


if __name__ == "__main__":  # pragma: no cover - manual use
    from ksched.config import load

    sys.exit(run(load(), sys.argv[1] if len(sys.argv) > 1 else "worker"))
