"""Job files: valid ones parse; every invalid one gets one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksched.cli.jobfile import load_job, parse_duration, parse_job
from ksched.errors import JobSpecError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    return tmp_path


def test_a_cron_job_file(base: Path) -> None:
    jf = parse_job("job: nightly\nschedule: '0 2 * * *'\ntimezone: Europe/Berlin\nbinary: run.sh\n"
                   "args: [--full, 3]\ntimeout: 10m\nretries: {max_attempts: 3, backoff: 5s}\n"
                   "env: {MODE: fast, DEBUG: true}\n", base)
    spec = jf.spec
    assert spec.kind == "cron" and spec.schedule.cron == "0 2 * * *" and spec.schedule.timezone == "Europe/Berlin"
    task = spec.tasks[0]
    assert task.args == ["--full", "3"] and task.timeout_ms == 600_000 and task.env == {"MODE": "fast",
                                                                                       "DEBUG": "true"}
    assert (task.retry.max_attempts, task.retry.backoff_ms) == (3, 5000)
    assert jf.binaries[0].path == (base / "run.sh").resolve()


def test_a_dag_job_file(base: Path) -> None:
    text = """
job: ci
tasks:
  build: {binary: run.sh}
  test: {binary: run.sh, depends_on: [build], retries: 2}
  deploy: {binary: run.sh, depends_on: [test], priority: high}
  notify: {binary: run.sh, depends_on: [build, test], trigger_rule: one_failed}
"""
    spec = parse_job(text, base).spec
    assert spec.kind == "dag" and [t.name for t in spec.tasks] == ["build", "test", "deploy", "notify"]
    assert spec.tasks[1].retry.max_attempts == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job: j\nschedule: '61 * * * *'\nbinary: run.sh\n", "schedule: invalid cron expression '61 * * * *'"),
        ("job: j\nbinary: missing.sh\n", "binary: file not found"),
        ("job: j\nbinary: run.sh\ntimeout: soon\n", "timeout: expected a duration"),
        ("job: j\nbinary: run.sh\nargs: hello\n", "args: expected list, got str 'hello'"),
        ("job: j\nbinary: run.sh\nmax_active_runs: lots\n", "max_active_runs: expected int"),
        ("job: j\nschedul: '* * * * *'\nbinary: run.sh\n", "schedul: unknown field (did you mean 'schedule'?)"),
        ("job: j\nbinary: run.sh\nretry: {max_attempts: 2}\n", "retry: unknown field (did you mean 'retries'?)"),
        ("job: j\nbinary: run.sh\nretries: {max_attempt: 2}\n", "retries.max_attempt: unknown field"),
        ("job: j\nbinary: run.sh\ntimezone: Nowhere/Land\n", "timezone: unknown IANA time zone"),
        ("job: j\nbinary: run.sh\npriority: urgent\n", "priority: unknown priority 'urgent'"),
        ("job: j\nbinary: run.sh\nmisfire: never\n", "misfire: unknown policy"),
        ("job: j\nbinary: run.sh\nat: tomorrow\n", "at: expected an ISO-8601 instant"),
        ("job: j\nschedule: '* * * * *'\nat: 2030-01-01T00:00:00Z\nbinary: run.sh\n", "at: a job has either"),
        ("binary: run.sh\n", "job: missing"),
        ("job: 'bad id!'\nbinary: run.sh\n", "job: invalid job id"),
        ("job: j\n", "binary: missing"),
        ("job: j\ntasks: {}\n", "tasks: a job needs at least one task"),
        ("job: j\ntasks:\n  a: {binary: run.sh, depends_on: [b]}\n", "tasks.a.depends_on: unknown dependency 'b'"),
        ("job: j\ntasks:\n  a: {binary: run.sh, depends_on: [b]}\n  b: {binary: run.sh, depends_on: [a]}\n",
         "tasks: dependency cycle: a -> b -> a"),
        ("job: j\ntasks:\n  a: {binary: run.sh, trigger_rule: sometimes}\n", "trigger_rule: unknown rule"),
        ("job: j\nbinary: run.sh\ntasks:\n  a: {binary: run.sh}\n", "binary: belongs inside a task"),
        ("- just\n- a list\n", "must be a mapping"),
        ("job: [unclosed\n", "not valid YAML at line"),
    ],
)
def test_invalid_job_files_get_one_line_naming_the_field(base: Path, text: str, message: str) -> None:
    with pytest.raises(JobSpecError) as exc:
        parse_job(text, base)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_duplicate_task_name_is_rejected(base: Path) -> None:
    # YAML mappings cannot hold duplicate keys; a spec built by any other client can.
    from dataclasses import replace

    from ksched.streams.core.validate import validate_job

    spec = parse_job("job: j\ntasks:\n  a: {binary: run.sh}\n", base).spec
    with pytest.raises(JobSpecError, match="duplicate task name 'a'"):
        validate_job(replace(spec, tasks=[spec.tasks[0], spec.tasks[0]]))


@pytest.mark.parametrize(("value", "ms"), [("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("250ms", 250),
                                           ("2d", 172_800_000), (90, 90_000), ("1.5s", 1500)])
def test_durations(value: object, ms: int) -> None:
    assert parse_duration(value, "f") == ms


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="cannot read"):
        load_job(tmp_path / "nope.yaml")
