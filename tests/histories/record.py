"""Records `basic.jsonl`: a real history, from a real broker, streams worker and executors, with a retry, a
lapsed lease (its executor is killed mid-attempt) and a failing DAG. Replayed by tests/unit/test_recorded.py.

    .venv/bin/python -m tests.histories.record      (starts its own broker unless KSCHED_BOOTSTRAP_SERVERS)
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import broker
from ksched.cli.audit import save_records
from ksched.config import Settings
from ksched.reader import topic_records
from tests.support import Cluster, eventually, write_job, write_script

OUT = Path(__file__).resolve().parent / "basic.jsonl"


def main() -> None:
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ksched-record-") as tmp:
        home = Path(tmp)
        s = Settings(bootstrap_servers=bootstrap, prefix=f"rec{uuid.uuid4().hex[:6]}", home=home / "home",
                     partitions=2, ready_partitions=2, control_partitions=1, lease_s=3.0, heartbeat_s=0.5,
                     lookahead_s=0.0, session_timeout_s=6.0)
        c = Cluster(s)
        c.streams("w1")
        first = c.executor(slots=2)
        write_script(home / "flaky.sh", '[ "$KSCHED_ATTEMPT" = 1 ] && exit 3\necho ok\n')
        write_script(home / "slow.sh",
                     'echo "attempt $KSCHED_ATTEMPT"\n[ "$KSCHED_ATTEMPT" = 1 ] && sleep 30\nexit 0\n')
        write_script(home / "step.sh", '[ "$1" = fail ] && exit 2\nexit 0\n')
        jobs = {
            "flaky": "job: flaky\nbinary: flaky.sh\nretries: {max_attempts: 3, backoff: 1s}\n",
            "lease": "job: lease\nbinary: slow.sh\nretries: {max_attempts: 3, backoff: 1s}\n",
            "pipeline": "job: pipeline\ntasks:\n  build: {binary: step.sh}\n"
                        "  test: {binary: step.sh, args: [fail], depends_on: [build]}\n"
                        "  deploy: {binary: step.sh, depends_on: [test]}\n"
                        "  notify: {binary: step.sh, depends_on: [test], trigger_rule: one_failed}\n",
            "every2s": "job: every2s\nschedule: '*/2 * * * * *'\nbinary: step.sh\n",
        }
        for name, text in jobs.items():
            r = c.ksched("submit", str(write_job(home, name, text)), "--wait", "--timeout", "120")
            assert r.returncode == 0, r.stderr
        eventually(lambda: any(t.state == "RUNNING" for ts in c.status("lease").tasks.values() for t in ts.values()),
                   60, what="the slow attempt runs")
        first.kill9()  # its attempt's lease lapses; a new executor runs the retry
        c.executor(slots=2)
        for job in ("flaky", "lease", "pipeline"):
            eventually(lambda j=job: any(r.state in ("SUCCEEDED", "FAILED") for r in c.status(j).runs.values()),
                       120, what=f"{job} finishes")
        eventually(lambda: len(c.succeeded_runs("every2s")) >= 3, 60)
        assert c.ksched("pause", "every2s").returncode == 0
        time.sleep(2)
        c.stop()
        inbox = list(topic_records(s, s.topic("inbox")))
        events = list(topic_records(s, s.topic("events")))
        save_records(OUT, inbox, events, s)
        print(f"recorded {len(inbox)} inbox records and {len(events)} decisions to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
