"""Lets mutmut 3.7 record which tests cover which function under pytest 9, which no longer has `Item._nodeid`.

Only the mutation run loads it (`[tool.mutmut] pytest_add_cli_args` in pyproject.toml). mutmut 3.8 reads
`item.nodeid` itself, but needs a click newer than faust-streaming allows.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not hasattr(item, "_nodeid"):
            item._nodeid = item.nodeid  # type: ignore[attr-defined]
