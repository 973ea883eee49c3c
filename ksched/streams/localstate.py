"""Whether a streams worker may keep its local RocksDB after it stopped, and what it must do to keep it.

After a clean stop everything the tables hold reached the changelog: the local files are kept as they are.

After a crash (kill -9) the local RocksDB of a partition this worker owned is *ahead* of that partition's changelog,
never behind: each table write goes to RocksDB and is then sent to the changelog, and RocksDB's write-ahead log
survives the process. Ahead by the writes of the inputs at or after the committed input offset (writes of
earlier inputs were acknowledged before that commit). So the local store is kept when this worker was the last
to commit the partition's input offsets (nobody decided on from its state since), and then:
  1. Faust's recovery is told the store reflects the whole changelog (`faustcompat.set_changelog_position`), so it
     reads none of it: replaying the changelog's tail over a store that is ahead would set some keys back and not
     others, and a job would be read half old, half new;
  2. the shell writes again every job an input at or after the committed offset touched (`InboxShell`'s
     recovery), which sends it to the changelog: what the crash may have kept from it is sent now.
Any other partition's store (someone committed after this worker, or no record of this worker's commits) is
removed and rebuilt from the changelog, as before.

Decided: a store that the changelog may lack writes of is trusted only when the group's committed offset is the
one this worker recorded at its last commit. A machine that lost power may lose RocksDB's unsynced log too: after
such a crash, remove the worker's data directory (it is then rebuilt from the changelog).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ksched.config import Settings
from ksched.reader import end_offsets, group_progress
from ksched.topics import app_id, changelog_topic

from . import faustcompat

log = logging.getLogger(__name__)

CLEAN_MARKER = "CLEAN_SHUTDOWN"
COMMITS = "COMMITTED.json"
TABLE = "jobstate"


class CommitRecord:
    """Records the input offsets this worker committed, per inbox partition, in its datadir."""

    def __init__(self, datadir: Path, inbox: str) -> None:
        self.path = datadir / COMMITS
        self.inbox = inbox
        self.offsets: dict[int, int] = {}

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        mine = {p: o for (topic, p), o in offsets.items() if topic == self.inbox}
        if not mine:
            return
        self.offsets.update(mine)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): o for p, o in sorted(self.offsets.items())}))
        os.replace(tmp, self.path)


def recorded_commits(datadir: Path) -> dict[int, int]:
    try:
        return {int(p): int(o) for p, o in json.loads((datadir / COMMITS).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def keepable(recorded: dict[int, int], committed: dict[int, int], stores: set[int]) -> set[int]:
    """The partitions whose local store survives a crash: this worker was the last to commit their inputs."""
    return {p for p in stores if p in recorded and committed.get(p) == recorded[p]}


def prepare_datadir(datadir: Path, settings: Settings | None = None) -> set[int] | None:
    """Make `datadir` safe to open. Returns None if everything was kept (a clean stop), else the partitions
    whose store was kept after a crash (the others were removed)."""
    marker = datadir / CLEAN_MARKER
    if marker.exists():
        marker.unlink()
        return None
    if not datadir.exists():
        datadir.mkdir(parents=True, exist_ok=True)
        return set()
    stores = faustcompat.table_partition_dbs(datadir, TABLE)
    recorded = recorded_commits(datadir)
    keep: set[int] = set()
    if settings is not None and stores and recorded:
        try:
            committed = {p: c for p, (c, _) in group_progress(settings, settings.topic("inbox"),
                                                               app_id(settings)).items()}
            ends = end_offsets(settings, changelog_topic(settings))
            keep = keepable(recorded, committed, set(stores))
            for p in keep:
                if ends.get(p, 0) > 0:
                    faustcompat.set_changelog_position(stores[p], ends[p] - 1)
        except Exception as exc:  # the cluster could not tell: trust nothing
            log.warning("%s: could not check the local state against the cluster (%s)", datadir, exc)
            keep = set()
    for p, path in stores.items():
        if p not in keep:
            shutil.rmtree(path, ignore_errors=True)
    log.warning("%s was not shut down cleanly: kept the local state of partitions %s, rebuilding %s from the "
                "changelog", datadir, sorted(keep) or "none", sorted(set(stores) - keep) or "none")
    return keep
