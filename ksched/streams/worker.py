"""Run one streams worker process (`ksched streams`).

A worker's local RocksDB files are kept after a clean shutdown; after a crash, a partition's store is kept only
if this worker was the last to commit that partition's inputs, and rebuilt from the changelog otherwise
(`streams.localstate`).
"""

from __future__ import annotations

import cProfile
import logging
import os
import sys

from ksched.config import Settings
from ksched.topics import ensure_topics

from .app import create_app
from .localstate import CLEAN_MARKER, prepare_datadir

log = logging.getLogger(__name__)


def run(settings: Settings, name: str = "worker", web_port: int | None = None, loglevel: str = "warning",
        web_host: str = "127.0.0.1", web_url: str | None = None) -> int:
    import faust

    ensure_topics(settings)
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
