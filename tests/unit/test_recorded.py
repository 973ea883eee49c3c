"""A history recorded from a real run (tests/histories/record.py): a retry, a lapsed lease, a failing DAG and
a cron job. It must replay to the same decisions the live system logged; tampering with it must be caught."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ksched.cli.audit import load_records
from ksched.config import Settings
from ksched.schemas.codec import default_codec
from ksched.schemas.events import AttemptEnded
from ksched.streams.replay import replay

HISTORY = Path(__file__).resolve().parents[1] / "histories" / "basic.jsonl"
REPO = Path(__file__).resolve().parents[2]


def test_the_recorded_history_replays_to_exactly_the_logged_decisions() -> None:
    inbox, events, settings = load_records(HISTORY, Settings())
    result = replay(settings, inbox, events)
    assert result.ok, (result.violations, result.missing_from_log[:5], result.not_reproduced[:5])
    outcomes = sorted((d.job_id, d.attempt, d.outcome) for d in {d.event_id: d for d in result.decisions
                                                                 if isinstance(d, AttemptEnded)}.values())
    assert ("flaky", 1, "FAILED") in outcomes and ("flaky", 2, "SUCCEEDED") in outcomes
    assert ("lease", 1, "LOST") in outcomes and ("lease", 2, "SUCCEEDED") in outcomes
    assert [r.state for r in result.jobs["pipeline"].runs.values()] == ["FAILED"]
    assert result.jobs["every2s"].paused
    assert replay(settings, inbox, events).digest() == result.digest()


def run_replay(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ksched.cli.main", "replay", "--from-file", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_replay_command_accepts_it_and_names_a_forged_second_success(tmp_path: Path) -> None:
    ok = run_replay(HISTORY)
    assert ok.returncode == 0 and "all invariants hold" in ok.stdout
    codec = default_codec()
    lines = HISTORY.read_text().splitlines()
    success = next(codec.decode(base64.b64decode(d["value"])) for d in map(json.loads, lines[1:])
                   if d["topic"] == "events" and "SUCCEEDED" in str(codec.decode(base64.b64decode(d["value"])))
                   and isinstance(codec.decode(base64.b64decode(d["value"])), AttemptEnded))
    forged = replace(success, event_id=f"{success.task_id}#7/ended", attempt=7)
    record = {"topic": "events", "partition": 0, "offset": 10_000, "timestamp_ms": 0, "key": None,
              "value": base64.b64encode(codec.encode(forged)).decode()}
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines, json.dumps(record)]) + "\n")
    bad = run_replay(tampered)
    assert bad.returncode == 1
    assert "VIOLATION at most one success per task" in bad.stdout
    assert success.event_id in bad.stdout and forged.event_id in bad.stdout
