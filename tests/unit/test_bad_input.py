"""Input that must not stop the scheduler: deep or backwards DAGs, a decision that raises."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from ksched.errors import JobSpecError
from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, TaskSpec
from ksched.streams.core import dag
from ksched.streams.core.validate import validate_job
from tests.samples import DIGEST

ART = ArtifactRef(DIGEST, "x", 1)


def chain(n: int, backwards: bool) -> list[TaskSpec]:
    tasks = [TaskSpec(f"t{i}", ART, depends_on=[f"t{i - 1}"] if i else [], retry=RetryPolicy(max_attempts=1))
             for i in range(n)]
    return tasks[::-1] if backwards else tasks


def test_a_1500_task_chain_listed_last_first_is_valid_and_ordered_from_its_first_task() -> None:
    tasks = chain(1500, backwards=True)
    validate_job(JobSpec("long", tasks))  # was RecursionError in a recursive DFS
    assert dag.topological_order(tasks) == [f"t{i}" for i in range(1500)]


def test_a_cycle_in_a_2000_task_job_is_reported_in_depends_on_order() -> None:
    tasks = chain(2000, backwards=True)
    tasks[-1] = replace(tasks[-1], depends_on=["t1999"])  # t0 depends on the last task
    with pytest.raises(JobSpecError) as exc:
        validate_job(JobSpec("loop", tasks))
    path = str(exc.value).split("dependency cycle: ", 1)[1].split(" -> ")
    assert path[0] == path[-1] and len(path) == 2001
    # each task depends on the next one in the path
    by_name = {t.name: t for t in tasks}
    assert all(b in by_name[a].depends_on for a, b in itertools.pairwise(path))


def test_the_order_keeps_the_spec_order_within_each_wave() -> None:
    tasks = [TaskSpec("z", ART), TaskSpec("b", ART, depends_on=["z"]), TaskSpec("a", ART),
             TaskSpec("c", ART, depends_on=["a", "z"])]
    assert dag.topological_order(tasks) == ["z", "a", "b", "c"]


# --- a decision that raises ---------------------------------------------------------------------------

def test_a_decision_that_raises_dead_letters_its_record_and_the_partition_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ksched.config import Settings
    from ksched.partitioning import partition_for
    from ksched.schemas.codec import default_codec
    from ksched.schemas.events import DeadLetter, SubmitJob, Tick
    from ksched.streams import shell as shell_mod
    from ksched.streams.replay import MemoryStore
    from tests.samples import job
    from tests.sim import T0

    codec, settings = default_codec(), Settings(prefix="t", partitions=1)
    sh, store = shell_mod.InboxShell(settings, codec), MemoryStore()
    real = shell_mod.core.decide

    def decide(state, event, now_ms, params):  # type: ignore[no-untyped-def]
        if (getattr(event, "job", None) is not None and event.job.job_id == "poison") or \
                (isinstance(event, Tick) and state is not None and state.job_id == "cron-poison"):
            raise ZeroDivisionError("injected")
        return real(state, event, now_ms, params)

    monkeypatch.setattr(shell_mod.core, "decide", decide)
    assert partition_for("poison", 1) == 0
    raw = codec.encode(SubmitJob("c1", job("poison"), T0))
    out = sh.process(store, 0, 0, b"poison", raw)
    (dl,) = [codec.decode(m.value) for m in out if m.topic == "t.dlq"]
    assert isinstance(dl, DeadLetter)
    assert (dl.offset, dl.key, dl.value) == (0, b"poison", raw)
    assert dl.reason == "deciding SubmitJob for job 'poison' failed: ZeroDivisionError: injected"
    assert store.get(b"poison") is None  # nothing of the failed decision was kept
    # The partition goes on: the next record is decided as usual.
    out = sh.process(store, 0, 1, b"ok", codec.encode(SubmitJob("c2", job("ok"), T0)))
    assert "t.events" in {m.topic for m in out} and "t.dlq" not in {m.topic for m in out}
    # A job whose tick decision raises is dead-lettered once and taken out of the due index, not every tick.
    sh.process(store, 0, 2, b"cron-poison", codec.encode(SubmitJob("c3", job("cron-poison", "* * * * * *"), T0)))
    first = sh.process(store, 0, 3, None, codec.encode(Tick(0, T0 + 1_000, "w")))
    later = sh.process(store, 0, 4, None, codec.encode(Tick(0, T0 + 2_000, "w")))
    assert [codec.decode(m.value).reason for m in first if m.topic == "t.dlq"] == [  # type: ignore[attr-defined]
        "deciding Tick for job 'cron-poison' failed: ZeroDivisionError: injected"]
    assert [m for m in later if m.topic == "t.dlq"] == []


def test_a_record_over_the_maximum_is_dead_lettered_by_size_and_digest_with_its_first_bytes() -> None:
    import hashlib

    from ksched.config import Settings
    from ksched.schemas.codec import default_codec
    from ksched.streams.replay import MemoryStore
    from ksched.streams.router import DLQ_HEAD_BYTES
    from ksched.streams.shell import InboxShell
    from ksched.topics import MAX_OUTPUT_BYTES, MAX_RECORD_BYTES

    codec = default_codec()
    sh = InboxShell(Settings(prefix="t", partitions=1), codec)
    huge = b"\xc3\x01" + b"x" * (MAX_RECORD_BYTES + 10)
    (msg,) = sh.process(MemoryStore(), 0, 5, b"k", huge)
    dl = codec.decode(msg.value)
    assert msg.topic == "t.dlq" and len(msg.value or b"") < MAX_OUTPUT_BYTES
    assert dl.value == huge[:DLQ_HEAD_BYTES]  # type: ignore[attr-defined]
    assert dl.reason == (  # type: ignore[attr-defined]
        f"a record of {len(huge)} bytes is over the inbox's maximum of {MAX_RECORD_BYTES} (original: {len(huge)} "
        f"bytes, sha256 {hashlib.sha256(huge).hexdigest()}; its first {DLQ_HEAD_BYTES} bytes are kept)")


def test_a_record_at_the_maximum_is_dead_lettered_whole_when_it_is_garbage() -> None:
    from ksched.config import Settings
    from ksched.schemas.codec import default_codec
    from ksched.streams.replay import MemoryStore
    from ksched.streams.shell import InboxShell
    from ksched.topics import MAX_RECORD_BYTES

    codec = default_codec()
    sh = InboxShell(Settings(prefix="t", partitions=1), codec)
    junk = b"\x00" * MAX_RECORD_BYTES
    (msg,) = sh.process(MemoryStore(), 0, 5, b"k", junk)
    assert codec.decode(msg.value).value == junk  # type: ignore[attr-defined]


def test_a_job_file_that_is_not_utf8_gets_one_line_and_exit_2(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    path = Path(str(tmp_path)) / "job.yaml"
    path.write_bytes(b"job: caf\xe9\nbinary: x.sh\n")
    done = subprocess.run([sys.executable, "-m", "ksched.cli.main", "submit", str(path)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "KSCHED_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"ksched: {path}: not UTF-8 text (byte 8: b'\\xe9')"]


def test_serving_the_api_beyond_this_host_without_a_token_is_refused_with_one_line(tmp_path: object) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ksched.cli.main", "streams", "--web-port", "6099",
                           "--web-host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "KSCHED_HOME": str(tmp_path)})
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("ksched: --web-host 0.0.0.0 serves jobs, runs and logs beyond this host without a token")
