"""A worker's local state after a crash: kept only where this worker committed last; Faust told the store reflects
the changelog; jobs decided past the committed offset written again at recovery, so they reach the changelog."""

from __future__ import annotations

from pathlib import Path

from ksched.config import Settings
from ksched.partitioning import partition_for
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ClaimTask, SubmitJob
from ksched.streams import faustcompat
from ksched.streams.jobstore import JobRecord, changes, decode_record, encode_record
from ksched.streams.localstate import CLEAN_MARKER, CommitRecord, keepable, prepare_datadir, recorded_commits
from ksched.streams.replay import MemoryStore
from ksched.streams.shell import InboxShell
from tests.samples import job
from tests.sim import T0


def test_a_partition_is_kept_only_if_the_group_committed_what_this_worker_last_committed() -> None:
    recorded = {0: 10, 1: 20, 2: 30}
    committed = {0: 10, 1: 25, 2: 30, 3: 7}  # 1: someone committed after us; 3: never ours
    assert keepable(recorded, committed, {0, 1, 2, 3}) == {0, 2}
    assert keepable(recorded, committed, {2}) == {2}  # no store, nothing to keep
    assert keepable({}, committed, {0, 1}) == set()


def test_commits_are_recorded_per_inbox_partition_and_merged(tmp_path: Path) -> None:
    record = CommitRecord(tmp_path, "t.inbox")
    record.committed({("t.inbox", 0): 5, ("t.commands", 0): 99})
    record.committed({("t.inbox", 1): 7})
    record.committed({("t.inbox", 0): 6})
    assert recorded_commits(tmp_path) == {0: 6, 1: 7}
    (tmp_path / "COMMITTED.json").write_text("{not json")
    assert recorded_commits(tmp_path) == {}


def _store(datadir: Path, partition: int) -> Path:
    from faust.stores.rocksdb import RocksDBOptions

    path = datadir / "v1" / "tables" / f"jobstate-{partition}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = RocksDBOptions().open(path)
    db.put(b"job", b"value")
    db.close()
    return path


def test_after_a_clean_stop_everything_is_kept(tmp_path: Path) -> None:
    path = _store(tmp_path, 0)
    (tmp_path / CLEAN_MARKER).write_text("ok\n")
    assert prepare_datadir(tmp_path) is None
    assert path.exists() and not (tmp_path / CLEAN_MARKER).exists()


def test_after_a_crash_with_nothing_to_check_against_every_store_is_rebuilt(tmp_path: Path) -> None:
    paths = [_store(tmp_path, p) for p in (0, 1)]
    assert faustcompat.table_partition_dbs(tmp_path, "jobstate") == {0: paths[0], 1: paths[1]}
    assert prepare_datadir(tmp_path, None) == set()
    assert not any(p.exists() for p in paths)


def test_faust_is_told_the_kept_store_reflects_the_changelog_up_to_its_end(tmp_path: Path) -> None:
    from faust.stores.rocksdb import RocksDBOptions, Store

    path = _store(tmp_path, 3)
    faustcompat.set_changelog_position(path, 41)
    db = RocksDBOptions().open(path)
    try:
        assert db.get(Store.offset_key) == b"41" and db.get(b"job") == b"value"
    finally:
        db.close()


class Counting(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.puts.append(key)
        super().put(key, value)


def test_recovery_writes_again_and_republishes_the_jobs_decided_past_the_committed_offset_only() -> None:
    codec = default_codec()
    settings = Settings(prefix="t", partitions=1)
    store = Counting()
    sh = InboxShell(settings, codec)
    assert partition_for("a", 1) == partition_for("b", 1) == 0
    sh.process(store, 0, 0, b"a", codec.encode(SubmitJob("c1", job("a"), T0)))
    out = sh.process(store, 0, 1, b"b", codec.encode(SubmitJob("c2", job("b"), T0)))
    ready = next(codec.decode(m.value) for m in out if m.topic == "t.ready.normal" and m.value)
    sh.process(store, 0, 2, b"b", codec.encode(ClaimTask("cl", "b", ready.run_id, ready.task_id, 1, "x", T0)))
    # Every output of b acknowledged (its outbox is empty), but its views were held for coalescing.
    rec = decode_record(store.get(b"b") or b"", store.get)
    store.put(b"b", encode_record(JobRecord(rec.applied, rec.state, []), changes(None, rec.state)))
    # A restart whose committed offset is 1: job b was decided at 1 and 2, job a only before.
    restarted = InboxShell(settings, codec)
    restarted.assigned({0})
    store.puts.clear()
    out = restarted.process(store, 0, 1, b"b", codec.encode(SubmitJob("c2", job("b"), T0)), committed=1)
    # Its views again too (the publisher holds views until the commit, so they may never have gone out).
    assert {m.topic for m in out if (m.key or b"").startswith(b"b")} >= {"t.jobs", "t.runs", "t.tasks"}
    assert not [m for m in out if (m.key or b"").startswith(b"a")]
    assert b"b" in store.puts  # its record, sent again
    assert b"a" not in store.puts
