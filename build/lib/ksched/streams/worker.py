"""Run one streams worker process (`ksched streams`).

A worker's local RocksDB files are trusted only after a clean shutdown: after a crash they may hold
writes whose changelog records never reached Kafka, so they are wiped and rebuilt from the changelog.
"""

from __future__ import annotations

import cProfile
import logging
import os
import shutil
import sys
from pathlib import Path

from ksched.config import Settings
from ksched.topics import ensure_topics

from .app import create_app

CLEAN_MARKER = "CLEAN_SHUTDOWN"
log = logging.getLogger(__name__)


def prepare_datadir(datadir: Path) -> bool:
    """Make `datadir` safe to open. Returns True if its previous contents were kept."""
    marker = datadir / CLEAN_MARKER
    if marker.exists():
        marker.unlink()
        return True
    if datadir.exists():
        log.warning("%s was not shut down cleanly: rebuilding its tables from the changelog", datadir)
        shutil.rmtree(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    return False


def run(settings: Settings, name: str = "worker", web_port: int | None = None, loglevel: str = "warning",
        web_host: str = "127.0.0.1", web_url: str | None = None) -> int:
    import faust

    ensure_topics(settings)
    datadir = settings.home / "streams" / name
    prepare_datadir(datadir)
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
