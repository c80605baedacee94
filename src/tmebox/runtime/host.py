"""Values across the sandbox boundary by C signature (docs/embedding.md).

Every value crosses as a register's 64 bits. Going in, a Python value is checked against
its C type (an int out of range is an error, not a silent wrap); coming out, the register
is read as that type (a C `int` result is the low 32 bits, sign-extended). The frame
layout is the one of `tmebox.toolchain.glue`: six integer slots, then eight SSE slots.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tmebox.trusted.signature import FRAME_SIZE, FRAME_SSE, Signature, ValType

__all__ = ["CHostFunction", "FrameReader", "IntCall", "from_register", "pack_frame",
           "to_register"]

_MASK64 = (1 << 64) - 1


class CHostFunction:
    """A host function written in C, for Runtime.define (native backend; docs/embedding.md).

    `address` is the function's address, e.g. `ffi.cast("uintptr_t", ffi.addressof(lib,
    "host_add"))` for a cffi module. The C function is called as
    `int64_t fn(const struct tmebox_caller *caller, int64_t a0, ..., int64_t a5)` with the
    import's integer arguments (the rest zero) and runs holding the GIL; its return value
    is the result's register. It gets the caller's memory as `caller->base`, `lo`, `hi`
    and must check every guest pointer against them itself: it is host code.
    """

    __slots__ = ("address",)

    def __init__(self, address: object) -> None:
        value = int(address)  # type: ignore[call-overload]
        if not 0 < value < 1 << 64:
            raise ValueError(f"CHostFunction: {address!r} is not a function address")
        self.address = value

    def __repr__(self) -> str:
        return f"<CHostFunction at {self.address:#x}>"


def to_register(t: ValType, value: object, what: str) -> int:
    """The 64 register bits of Python `value` as C type t; TypeError/OverflowError naming
    `what` if it is not one."""
    if t is ValType.F64 or t is ValType.F32:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{what}: {type(value).__name__} is not a {t} (float)")
        if t is ValType.F64:
            return struct.unpack("<Q", struct.pack("<d", value))[0]
        try:
            return struct.unpack("<I", struct.pack("<f", value))[0]
        except OverflowError:
            raise OverflowError(f"{what}: {value!r} does not fit a float (f32)") from None
    if t is ValType.VOID:
        return 0
    if t is ValType.BOOL:
        if not isinstance(value, bool | int):
            raise TypeError(f"{what}: {type(value).__name__} is not a bool")
        return int(bool(value))
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what}: {type(value).__name__} is not an int ({t})")
    bits = t.bits
    lo, hi = (-(1 << bits - 1), (1 << bits - 1) - 1) if t.signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise OverflowError(f"{what}: {value} is out of range for {t} [{lo}, {hi}]")
    return value & _MASK64


def from_register(t: ValType, bits: int) -> int | float | bool | None:
    """A register's value (any int; its low 64 bits count) read as C type t."""
    bits &= _MASK64
    if t is ValType.F64:
        return float(struct.unpack("<d", struct.pack("<Q", bits))[0])
    if t is ValType.F32:
        return float(struct.unpack("<f", struct.pack("<I", bits & 0xFFFF_FFFF))[0])
    if t is ValType.VOID:
        return None
    if t is ValType.BOOL:
        return bool(bits & 0xFF)
    width = t.bits
    v = bits & ((1 << width) - 1)
    return v - (1 << width) if t.signed and v >> (width - 1) else v


def pack_frame(sig: Signature, args: Sequence[object], name: str) -> bytes:
    """The argument frame of a call of `name` with args (converted and checked)."""
    slots = [0] * (FRAME_SIZE // 8)
    ints = floats = 0
    for i, (t, value) in enumerate(zip(sig.params, args, strict=True)):
        bits = to_register(t, value, f"{name}{sig}: argument {i}")
        if t.is_float:
            slots[FRAME_SSE // 8 + floats] = bits
            floats += 1
        else:
            slots[ints] = bits
            ints += 1
    return struct.pack(f"<{len(slots)}Q", *slots)


class IntCall:
    """The conversions of one integer-only signature, precomputed: sb.call's fast path.

    Arguments that are plain ints in range go through as they are (the invoker takes
    them as 64-bit registers); anything else takes to_register's checks and errors.
    """

    __slots__ = ("sig", "name", "_bounds", "_result")

    def __init__(self, name: str, sig: Signature) -> None:
        self.sig, self.name = sig, name
        self._bounds = tuple(_bounds(t) for t in sig.params)
        self._result = sig.result

    def args(self, args: Sequence[object]) -> Sequence[object]:
        if len(args) != len(self._bounds):
            raise TypeError(f"{self.name}{self.sig} takes {len(self._bounds)} argument(s), "
                            f"{len(args)} given")
        # Lengths are checked above; strict=True would cost more than the whole check.
        for a, (lo, hi) in zip(args, self._bounds, strict=False):
            if type(a) is not int or not lo <= a <= hi:
                return [to_register(t, v, f"{self.name}{self.sig}: argument {i}")
                        for i, (t, v) in enumerate(zip(self.sig.params, args, strict=True))]
        return args

    def result(self, rax: int) -> int | float | bool | None:
        return rax if self._result is ValType.I64 else from_register(self._result, rax)


def _bounds(t: ValType) -> tuple[int, int]:
    if t is ValType.BOOL:
        return (1, 0)  # empty: a bool takes the checked path
    bits = t.bits
    return (-(1 << bits - 1), (1 << bits - 1) - 1) if t.signed else (0, (1 << bits) - 1)


# How one 8-byte frame slot is read as each type (the low bytes hold the value).
_SLOT_FORMAT = {ValType.I8: "b7x", ValType.I16: "h6x", ValType.I32: "i4x", ValType.I64: "q",
                ValType.U8: "B7x", ValType.U16: "H6x", ValType.U32: "I4x", ValType.U64: "Q",
                ValType.PTR: "Q", ValType.BOOL: "?7x", ValType.F32: "f4x", ValType.F64: "d"}


class FrameReader:
    """unpack_frame for one signature, precomputed: one struct unpack of the slots used,
    then the values put in parameter order (host functions' fast path)."""

    __slots__ = ("size", "_struct", "_order")

    def __init__(self, sig: Signature) -> None:
        slots: list[tuple[int, int]] = []  # (slot, parameter index)
        ints = floats = 0
        for i, t in enumerate(sig.params):
            if t.is_float:
                slots.append((FRAME_SSE // 8 + floats, i))
                floats += 1
            else:
                slots.append((ints, i))
                ints += 1
        slots.sort()
        fmt, at = "<", 0
        for slot, i in slots:
            fmt += "8x" * (slot - at) + _SLOT_FORMAT[sig.params[i]]
            at = slot + 1
        self._struct = struct.Struct(fmt)
        self.size = self._struct.size
        # Position in the unpacked tuple of each parameter, in parameter order.
        where = {i: n for n, (_, i) in enumerate(slots)}
        self._order = tuple(where[i] for i in range(len(sig.params)))

    def read(self, frame: bytes) -> list[object]:
        values = self._struct.unpack(frame)
        return [values[n] for n in self._order]
