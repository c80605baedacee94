"""C function signatures as images record them (exports and host-function imports).

The toolchain writes them into `.tmebox_info` from the compiler's debug information; the
runtime converts Python values by them. They come from the image, so they are untrusted:
`parse` bounds them, and a lie hurts only the image's own calls (every value crosses as a
register's worth of bits, range-checked on the host side).
"""

from __future__ import annotations

from enum import StrEnum

from tmebox.trusted.errors import ImageError
from tmebox.trusted.record import Record

__all__ = ["FRAME_SIZE", "FRAME_SSE", "INT_REGS", "MAX_IMPORTS", "SSE_REGS", "Signature",
           "ValType"]

INT_REGS = 6  # System V: rdi, rsi, rdx, rcx, r8, r9
SSE_REGS = 8  # xmm0-7
MAX_IMPORTS = 1024
# The argument frame of a host-function stub and of the call thunk, in guest memory: the six
# integer registers, then the low 8 bytes of xmm0-7 (results: rax in slot 0, xmm0 at FRAME_SSE).
FRAME_SSE = 8 * INT_REGS
FRAME_SIZE = FRAME_SSE + 8 * SSE_REGS


class ValType(StrEnum):
    """A C scalar type by how it crosses the boundary."""

    I8 = "i8"
    I16 = "i16"
    I32 = "i32"
    I64 = "i64"
    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    U64 = "u64"
    BOOL = "bool"
    PTR = "ptr"  # a sandbox address, as an int
    F32 = "f32"
    F64 = "f64"
    VOID = "void"  # results only

    @property
    def is_float(self) -> bool:
        return self in (ValType.F32, ValType.F64)

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def signed(self) -> bool:
        return self in (ValType.I8, ValType.I16, ValType.I32, ValType.I64)


_BITS = {ValType.I8: 8, ValType.I16: 16, ValType.I32: 32, ValType.I64: 64, ValType.U8: 8,
         ValType.U16: 16, ValType.U32: 32, ValType.U64: 64, ValType.BOOL: 8, ValType.PTR: 64,
         ValType.F32: 32, ValType.F64: 64, ValType.VOID: 0}


class Signature(Record, frozen=True):
    params: tuple[ValType, ...]
    result: ValType

    def __post_init__(self) -> None:
        if ValType.VOID in self.params:
            raise ValueError("void is not a parameter type")
        ints = sum(not p.is_float for p in self.params)
        floats = len(self.params) - ints
        if ints > INT_REGS or floats > SSE_REGS:
            raise ValueError(f"{self}: more arguments than the System V argument registers "
                             f"({INT_REGS} integer, {SSE_REGS} floating-point)")

    @property
    def uses_sse(self) -> bool:
        """Whether a call needs %xmm registers (the host enters through the call thunk)."""
        return self.result.is_float or any(p.is_float for p in self.params)

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> {self.result}"

    def __repr__(self) -> str:
        return f"Signature('{self}')"

    def to_json(self) -> list[object]:
        return [self.result.value, [p.value for p in self.params]]

    @classmethod
    def parse(cls, obj: object, what: str) -> Signature:
        """A signature from its `.tmebox_info` form [result, [params...]]; ImageError if bad."""
        try:
            if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], list):
                raise ValueError("not [result, [params]]")
            if len(obj[1]) > INT_REGS + SSE_REGS:
                raise ValueError("too many parameters")
            return cls(tuple(ValType(p) for p in obj[1]), ValType(obj[0]))
        except (ValueError, TypeError) as e:
            raise ImageError(f"{what}: bad signature {str(obj)[:80]}: {e}") from None
