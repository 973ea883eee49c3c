"""The generated code behind records: __init__ setting slots, decoding by setting them, compact encoding."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from ksched.schemas import events
from ksched.schemas.events import ArtifactRef, JobSpec, RetryPolicy, TaskSpec
from ksched.schemas.records import from_data, replace, set_slots_in_init, to_compact_data, to_data
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


def test_replace_makes_what_dataclasses_replace_makes() -> None:
    import random

    from tests.samples import random_sample, random_value

    rng = random.Random(7)
    for cls in [*events.RECORD_TYPES, model.Task, model.Attempt]:
        obj = random_sample(cls, rng)
        hints = __import__("typing").get_type_hints(cls)
        for f in dataclasses.fields(cls):
            changed = {f.name: random_value(hints[f.name], f.name, rng)}
            made = replace(obj, **changed)
            assert type(made) is cls and made == dataclasses.replace(obj, **changed)
            assert getattr(made, f.name) is changed[f.name]
        assert replace(obj) == obj and replace(obj) is not obj
    kept = ["x"]
    assert replace(_Fast("a", 1, kept), size=2) == _Fast("a", 2, kept) and replace(_Fast("a", 1, kept)).tags is kept
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        replace(_Fast("a"), nope=1)
    with pytest.raises(ValueError, match="empty"):  # a class with a __post_init__ goes through dataclasses'
        replace(_Checked("a"), name="")
    with pytest.raises(TypeError):
        replace(object())


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
