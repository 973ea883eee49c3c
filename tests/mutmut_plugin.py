"""A pytest plugin for the mutation run only (`[tool.mutmut] pytest_add_cli_args` in pyproject.toml).

* mutmut 3.7 maps tests to the functions they call through `Item._nodeid`, which pytest 9 no longer has
  (mutmut 3.8 reads `item.nodeid`, but needs a click newer than faust-streaming allows).
* mutmut forks every mutant's test run from a process that has already run the tests, so results the core
  memoises (`lru_cache`d fire times, the DAG index of a spec) would be answered from the unmutated code and
  hide the mutant: each run starts with those caches empty.
"""

from __future__ import annotations

import sys

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    for name, module in list(sys.modules.items()):
        if name.startswith("ksched.streams.core"):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
    model = sys.modules.get("ksched.streams.core.model")
    if model is not None:
        model._INDEX.clear()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not hasattr(item, "_nodeid"):
            item._nodeid = item.nodeid  # type: ignore[attr-defined]
