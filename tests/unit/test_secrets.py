"""Secrets by reference: a job names them (`env_from`), the executor resolves them at start, the history never
holds their values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksched.cli.jobfile import parse_job
from ksched.errors import JobSpecError, SecretError
from ksched.executor.secrets import DirectorySecrets, open_secrets, resolve
from ksched.schemas.codec import default_codec
from ksched.schemas.events import ArtifactRef, JobSpec, SubmitJob, TaskSpec
from ksched.streams.core.validate import validate_job
from tests.samples import DIGEST

ART = ArtifactRef(DIGEST, "x", 1)


def test_a_job_file_names_its_secrets_and_the_record_holds_only_the_reference(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    jf = parse_job("job: deploy\nbinary: run.sh\nenv: {MODE: fast}\nenv_from: {TOKEN: 'secret:deploy-token'}\n",
                   tmp_path, "deploy.yaml")
    (task,) = jf.spec.tasks
    assert task.env_from == {"TOKEN": "secret:deploy-token"} and task.env == {"MODE": "fast"}
    raw = default_codec().encode(SubmitJob("c", jf.spec, 0))
    assert b"secret:deploy-token" in raw


@pytest.mark.parametrize(
    ("env_from", "env", "message"),
    [
        ({"TOKEN": "hunter2"}, {}, "env_from.TOKEN: expected secret:<name>, got 'hunter2'"),
        ({"KSCHED_TASK_ID": "secret:x"}, {}, "env_from.KSCHED_TASK_ID: not a variable name"),
        ({"1BAD": "secret:x"}, {}, "env_from.1BAD: not a variable name"),
        ({"TOKEN": "secret:../etc/passwd"}, {}, "expected secret:<name>"),
        ({"TOKEN": "secret:t"}, {"TOKEN": "plain"}, "env_from.TOKEN: also set in env"),
    ],
)
def test_a_bad_secret_reference_is_refused_naming_the_field(env_from: dict[str, str], env: dict[str, str],
                                                           message: str) -> None:
    with pytest.raises(JobSpecError) as exc:
        validate_job(JobSpec("j", [TaskSpec("main", ART, env=env, env_from=env_from)]))
    assert message in str(exc.value)


def test_references_resolve_from_a_directory_and_a_missing_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "deploy-token").write_text("s3cr3t\n")
    store = open_secrets(str(tmp_path))
    assert isinstance(store, DirectorySecrets)
    assert resolve({"TOKEN": "secret:deploy-token"}, store) == {"TOKEN": "s3cr3t"}
    assert resolve({}, None) == {}
    with pytest.raises(SecretError, match="no secret 'other'"):
        resolve({"TOKEN": "secret:other"}, store)
    with pytest.raises(SecretError, match="no secret store"):
        resolve({"TOKEN": "secret:deploy-token"}, None)
    assert open_secrets(f"file://{tmp_path}").get("deploy-token") == "s3cr3t"  # type: ignore[union-attr]
