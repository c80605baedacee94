"""trusted.record.Record: what @dataclass gave the run path's records, without dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from tmebox.trusted.record import Record, as_dict, field, replace


class Point(Record, frozen=True):
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)
    note: str = field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)
    note: str = dataclasses.field(default="", compare=False)


class Box(Record):
    items: list[int] = field(default_factory=list)
    label: str = "box"


def test_init_takes_positions_keywords_and_defaults_like_a_dataclass():
    for args, kw in [((1,), {}), ((1, 2), {"note": "n"}), ((), {"x": 3, "tags": ("a",)})]:
        p, d = Point(*args, **kw), DataPoint(*args, **kw)
        assert repr(p) == repr(d).replace("DataPoint", "Point")
        assert as_dict(p) == dataclasses.asdict(d)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=2)  # type: ignore[call-arg]


def test_equality_and_hash_follow_the_compared_fields():
    assert Point(1, 2, note="a") == Point(1, 2, note="b")
    assert hash(Point(1, 2, note="a")) == hash(Point(1, 2, note="b"))
    assert Point(1, 2) != Point(1, 3)
    assert Point(1) != DataPoint(1)
    assert len({Point(1), Point(1), Point(2)}) == 2
    with pytest.raises(TypeError, match="unhashable"):
        hash(Box())  # mutable and compared: not hashable, as with dataclasses


def test_eq_false_keeps_identity():
    class Handle(Record, frozen=True, eq=False):
        n: int

    a = Handle(1)
    assert a != Handle(1) and a == a
    assert hash(a) == object.__hash__(a)


def test_frozen_fields_cannot_change_and_mutable_ones_can():
    p = Point(1)
    with pytest.raises(AttributeError, match="frozen"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del p.x  # type: ignore[misc]
    b = Box()
    b.label = "other"
    assert b.label == "other"
    with pytest.raises(AttributeError):
        b.colour = "red"  # type: ignore[attr-defined]  # slots: no other attribute
    assert not hasattr(b, "__dict__")


def test_factories_run_per_instance():
    a, b = Box(), Box()
    a.items.append(1)
    assert b.items == [] and Box([5]).items == [5]


def test_post_init_runs_and_subclasses_add_fields():
    seen = []

    class Base(Record):
        a: int

        def __post_init__(self) -> None:
            seen.append(self.a)

    class Sub(Base):
        b: str = "b"

    s = Sub(7, "c")
    assert (s.a, s.b, seen) == (7, "c", [7])
    assert repr(s) == "test_post_init_runs_and_subclasses_add_fields.<locals>.Sub(a=7, b='c')"


def test_replace_makes_a_changed_copy():
    p = Point(1, 2, ("t",), "n")
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags, q.note) == (1, 5, ("t",), "n") and p.y == 2
    with pytest.raises(TypeError, match="no field"):
        replace(p, z=1)


def test_a_field_without_default_cannot_follow_one_with():
    with pytest.raises(TypeError, match="follows one with a default"):
        class Bad(Record):  # noqa: F841
            a: int = 0
            b: int  # type: ignore[misc]
    with pytest.raises(ValueError, match="not both"):
        field(default=1, default_factory=int)


def test_init_is_made_when_the_class_is_first_instantiated(monkeypatch):
    from tmebox.trusted import record

    made = []
    real = record._make_init
    monkeypatch.setattr(record, "_make_init", lambda name, *a: made.append(name) or real(name, *a))

    class Lazy(Record, frozen=True):
        a: int
        b: str = "b"

    assert made == []
    assert Lazy(1) == Lazy(a=1, b="b") and Lazy(2).b == "b"
    assert made == ["Lazy"]  # once, by the first instance
    with pytest.raises(TypeError):
        Lazy()  # type: ignore[call-arg]
