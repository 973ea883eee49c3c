"""docker-compose.yml cannot be run on the machines ksched is built on (no Docker engine), so what can be checked
without one is: every ksched command in it is one the CLI takes, its environment is settings ksched reads, and
each streams worker's API is allowed where it listens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ksched import config
from ksched.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def _ksched_services() -> list[tuple[str, dict[str, Any]]]:
    return [(name, svc) for name, svc in _services().items()
            if isinstance(svc.get("command"), list) and svc["command"][:1] == ["ksched"]]


def test_the_compose_file_runs_topics_two_workers_and_two_executors() -> None:
    roles = sorted(svc["command"][1] for _, svc in _ksched_services())
    assert roles == ["executor", "executor", "streams", "streams", "topics"]


@pytest.mark.parametrize(("name", "svc"), _ksched_services(), ids=[name for name, _ in _ksched_services()])
def test_every_ksched_command_in_the_compose_file_is_one_the_cli_takes(name: str, svc: dict[str, Any]) -> None:
    args = build_parser().parse_args(svc["command"][1:])  # exits (SystemExit) on an unknown option
    env = {k: str(v) for k, v in svc["environment"].items()}
    settings = config.load(env)
    assert settings.replication_factor == 3 and settings.artifact_url.startswith("s3://")
    if svc["command"][1] == "streams":
        from ksched.streams.web import exposure_error

        assert exposure_error(args.web_host, settings, args.web_open) is None, name
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", [])), "published beyond the host"


def test_every_ksched_setting_in_the_compose_file_is_one_ksched_reads() -> None:
    source = (ROOT / "ksched" / "config.py").read_text()
    for name, svc in _ksched_services():
        for key in svc["environment"]:
            assert not key.startswith("KSCHED_") or f'"{key}"' in source, f"{name}: {key} is not read by ksched"
