"""The generated code behind records: __init__ setting slots, decoding by setting them, compact encoding."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from ksched.schemas import events
from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, TaskSpec
from ksched.schemas.records import from_data, set_slots_in_init, to_compact_data, to_data
from ksched.streams.core import model
from tests.samples import sample


@dataclass(frozen=True, slots=True)
class _Plain:
    name: str
    size: int = 3
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Fast:
    name: str
    size: int = 3
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Checked:
    name: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("empty")


set_slots_in_init({"__name__": __name__, "_Fast": _Fast, "_Checked": _Checked})


def test_an_init_that_sets_slots_behaves_as_the_dataclass_one() -> None:
    assert _Fast.__init__ is not _Plain.__init__
    assert str(inspect.signature(_Fast.__init__)) == str(inspect.signature(_Plain.__init__))
    for args, kwargs in [(("a",), {}), (("a", 5), {}), (("a",), {"tags": ["x"]}), ((), {"name": "b", "size": 0})]:
        fast, plain = _Fast(*args, **kwargs), _Plain(*args, **kwargs)
        assert dataclasses.astuple(fast) == dataclasses.astuple(plain)
        assert fast == _Fast(*args, **kwargs)
    assert hash(ArtifactRef("d", "n", 1)) == hash(ArtifactRef("d", "n", 1)) == hash(("d", "n", 1))
    assert _Fast("a").tags is not _Fast("a").tags  # a fresh default from the factory each time
    assert dataclasses.replace(_Fast("a", 1, ["t"]), size=2) == _Fast("a", 2, ["t"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Fast("a").size = 4  # type: ignore[misc]
    for bad in [lambda: _Fast(), lambda: _Fast("a", 1, [], 2), lambda: _Fast("a", nope=1)]:  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            bad()


def test_a_class_with_a_post_init_keeps_its_own() -> None:
    with pytest.raises(ValueError, match="empty"):
        _Checked("")


@pytest.mark.parametrize("module", [events, model])
def test_the_records_of_events_and_of_the_state_set_their_slots(module: Any) -> None:
    frozen = [c for c in vars(module).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
              and c.__module__ == module.__name__ and c.__dataclass_params__.frozen]  # type: ignore[attr-defined]
    assert frozen and all("<locals>" not in c.__init__.__qualname__ for c in frozen)
    assert all(c.__init__.__code__.co_filename == "<string>" for c in frozen)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cls", [JobSpec, TaskSpec, RetryPolicy, ArtifactRef])
def test_records_come_back_from_full_and_from_compact_data(cls: type, seed: int) -> None:
    value = sample(cls, seed)
    assert from_data(cls, to_data(value)) == value
    assert from_data(cls, to_compact_data(value)) == value
