"""Record: the part of @dataclass the run path uses, at a fraction of its import cost.

`tmebox run` creates some twenty record classes at import (the image reader's, the
verdict's, the runtime's). @dataclass costs ~7 ms to import (it pulls in inspect, ast and
dis) and execs several generated functions per class; a Record class execs one, its
__init__, and only once the class is first instantiated. The rest (__eq__, __hash__,
__repr__, frozenness) is written once, here.

    class Point(Record, frozen=True):
        x: int
        y: int = 0
        tags: list[str] = field(default_factory=list)
        note: str = field(default="", compare=False)

Fields are the class's own annotations in order, every one (there is no ClassVar); a
subclass adds to its bases' fields, as with dataclasses. Instances have __slots__ and no
__dict__. With frozen=True assigning a field raises AttributeError and equal records hash
alike; eq=False keeps identity equality and hashing. `__post_init__`, if defined, runs at
the end of __init__. `replace(r, **changes)` is dataclasses.replace, `as_dict(r)` a shallow
dataclasses.asdict.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: this module must not need typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    R = TypeVar("R", bound="Record")
else:
    def dataclass_transform(**_options):
        return lambda cls: cls

__all__ = ["Record", "as_dict", "field", "replace"]


class _Missing:
    def __repr__(self) -> str:
        return "<no default>"


_MISSING: Any = _Missing()


class _Field:
    __slots__ = ("compare", "default", "factory")

    def __init__(self, default: object, factory: Callable[[], object] | None,
                 compare: bool) -> None:
        self.default, self.factory, self.compare = default, factory, compare


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
          compare: bool = True) -> Any:
    """A field's default (or a function making one per instance), and whether == and
    hash() look at it."""
    if default is not _MISSING and default_factory is not None:
        raise ValueError("field(): give default or default_factory, not both")
    return _Field(default, default_factory, compare)


@dataclass_transform(eq_default=True, field_specifiers=(field,))
class _RecordType(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, Any],
                frozen: bool = False, eq: bool = True) -> _RecordType:
        own = list(ns.get("__annotations__", {}))
        inherited: dict[str, _Field] = {}
        for base in reversed(bases):
            inherited.update(getattr(base, "_record_fields", {}))
        fields = dict(inherited)
        for k in own:
            value = ns.pop(k, _MISSING)
            fields[k] = value if isinstance(value, _Field) else _Field(value, None, True)
        ns["__slots__"] = tuple(k for k in own if k not in inherited)
        ns["_record_fields"] = fields
        ns["_record_compared"] = tuple(k for k, f in fields.items() if f.compare)
        if eq:
            ns.setdefault("__eq__", _fields_eq)
            ns.setdefault("__hash__", _fields_hash if frozen else None)
        if frozen:  # (a mutable record's fields are plain slots: no __setattr__ in Python)
            ns["__setattr__"], ns["__delattr__"] = _frozen_setattr, _frozen_delattr
        seen_default = False
        for k, f in fields.items():
            has_default = f.factory is not None or f.default is not _MISSING
            if seen_default and not has_default:
                raise TypeError(f"{name}: field {k} without a default follows one with a "
                                "default")
            seen_default = seen_default or has_default
        post_init = "__post_init__" in ns or any(hasattr(b, "__post_init__") for b in bases)
        cls = super().__new__(mcs, name, bases, ns)

        def __init__(self: Record, *args: Any, **kwargs: Any) -> None:
            # The first instance makes the real __init__: a class a run never instantiates
            # (8 of the 23 in `tmebox run hello.box`) costs no compile.
            init = _make_init(name, fields, frozen, post_init)
            type.__setattr__(cls, "__init__", init)
            init(self, *args, **kwargs)

        type.__setattr__(cls, "__init__", __init__)
        return cls


def _make_init(name: str, fields: dict[str, _Field], frozen: bool,
               post_init: bool) -> Callable[..., None]:
    """The class's __init__, generated: one exec per class (when it is first instantiated),
    plain assignments per instance."""
    env: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body = [], []
    for k, f in fields.items():
        if f.factory is not None:
            env[f"_factory_{k}"] = f.factory
            params.append(f"{k}=_MISSING")
            value = f"_factory_{k}() if {k} is _MISSING else {k}"
        elif f.default is not _MISSING:
            env[f"_default_{k}"] = f.default
            params.append(f"{k}=_default_{k}")
            value = k
        else:
            params.append(k)
            value = k
        body.append(f"_set(self, {k!r}, {value})" if frozen else f"self.{k} = {value}")
    if post_init:
        body.append("self.__post_init__()")
    code = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(code, env)  # noqa: S102 - our own text, made of field names
    init: Callable[..., None] = env["__init__"]
    init.__qualname__ = f"{name}.__init__"
    return init


def _fields_eq(self: Record, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return all(getattr(self, k) == getattr(other, k) for k in self._record_compared)


def _fields_hash(self: Record) -> int:
    return hash(tuple(getattr(self, k) for k in self._record_compared))


def _frozen_setattr(self: Record, name: str, value: object) -> None:
    if name in self._record_fields:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen "
                             f"{type(self).__name__}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: Record, name: str) -> None:
    if name in self._record_fields:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
    object.__delattr__(self, name)


class Record(metaclass=_RecordType, eq=False):
    """Base of record classes (this module's docstring)."""

    __slots__ = ()
    if TYPE_CHECKING:
        _record_fields: ClassVar[dict[str, _Field]]
        _record_compared: ClassVar[tuple[str, ...]]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._record_fields)
        return f"{type(self).__qualname__}({shown})"


def replace(record: R, /, **changes: Any) -> R:
    """A copy of record with some fields changed (dataclasses.replace)."""
    values = as_dict(record)
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"replace(): {type(record).__name__} has no field(s) "
                        f"{', '.join(sorted(unknown))}")
    values.update(changes)
    return type(record)(**values)


def as_dict(record: Record) -> dict[str, Any]:
    """The fields by name (values as they are, not copied)."""
    return {k: getattr(record, k) for k in record._record_fields}
