"""The docs name what the code has: every setting the code reads is in the README's table."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def settings_read_by(source: str) -> set[str]:
    return set(re.findall(r'"(KSCHED_[A-Z0-9_]+)"', source))


def test_every_setting_the_configuration_reads_is_in_the_readme_table() -> None:
    read = settings_read_by((REPO / "ksched" / "config.py").read_text())
    table: set[str] = set()
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("| `KSCHED_"):
            table |= set(re.findall(r"`(KSCHED_[A-Z0-9_]+)`", line.split("|")[1]))
    assert read, "the configuration reads KSCHED_* variables"
    assert sorted(read - table) == []


def test_the_checker_sees_a_setting_missing_from_the_table() -> None:
    assert settings_read_by('e.get("KSCHED_NEW_THING")') == {"KSCHED_NEW_THING"}
