"""Conversions across the boundary (tmebox.runtime.host), by property: what the host packs
is what a stub's frame reader gets back, and every register value reads back as its type."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmebox.runtime.host import FrameReader, IntCall, from_register, pack_frame, to_register
from tmebox.trusted.signature import Signature, ValType

INTS = [t for t in ValType if t not in (ValType.VOID, ValType.F32, ValType.F64)]


def _values(t: ValType) -> st.SearchStrategy:
    if t is ValType.F64:
        return st.floats(allow_nan=False)
    if t is ValType.F32:
        return st.floats(width=32, allow_nan=False)
    if t is ValType.BOOL:
        return st.booleans()
    lo, hi = (-(1 << t.bits - 1), (1 << t.bits - 1) - 1) if t.signed else (0, (1 << t.bits) - 1)
    return st.integers(lo, hi)


@st.composite
def calls(draw) -> tuple[Signature, list]:
    ints = draw(st.lists(st.sampled_from(INTS), max_size=6))
    floats = draw(st.lists(st.sampled_from([ValType.F32, ValType.F64]), max_size=8))
    params = draw(st.permutations(ints + floats))
    values = [draw(_values(t)) for t in params]
    return Signature(tuple(params), ValType.VOID), values


@given(calls())
def test_a_packed_frame_reads_back(call) -> None:
    sig, values = call
    frame = pack_frame(sig, values, "f")
    reader = FrameReader(sig)
    assert reader.read(frame[:reader.size]) == values


@pytest.mark.parametrize("t", [t for t in ValType if t is not ValType.VOID])
@given(data=st.data())
def test_register_round_trip(t: ValType, data) -> None:
    v = data.draw(_values(t))
    assert from_register(t, to_register(t, v, "x")) == v


def test_results_read_the_low_bits_as_the_type() -> None:
    assert from_register(ValType.I32, 0xFFFF_FFFF_0000_0005) == 5
    assert from_register(ValType.I32, 0x1_FFFF_FFFF) == -1
    assert from_register(ValType.U8, -1) == 255
    assert from_register(ValType.BOOL, 0x100) is False
    assert from_register(ValType.F32, struct.unpack("<I", struct.pack("<f", 1.5))[0]) == 1.5
    assert math.isnan(from_register(ValType.F64, 0x7FF8_0000_0000_0000))
    assert from_register(ValType.VOID, 123) is None


@pytest.mark.parametrize("t, bad, error", [
    (ValType.I8, 128, OverflowError), (ValType.U32, -1, OverflowError),
    (ValType.I64, 1 << 63, OverflowError), (ValType.I32, 1.0, TypeError),
    (ValType.F64, "1", TypeError), (ValType.F64, True, TypeError),
    (ValType.F32, 1e39, OverflowError), (ValType.PTR, -1, OverflowError),
])
def test_out_of_type_values_are_refused(t: ValType, bad, error) -> None:
    with pytest.raises(error, match="x"):
        to_register(t, bad, "x")


def test_int_call_passes_plain_ints_through_and_checks_the_rest() -> None:
    call = IntCall("f", Signature((ValType.I32, ValType.BOOL), ValType.I32))
    assert call.args((7, True)) == [7, 1]  # a bool takes the checked path
    with pytest.raises(OverflowError, match=r"f\(i32, bool\) -> i32: argument 0"):
        call.args((1 << 40, True))
    with pytest.raises(TypeError, match="takes 2 argument"):
        call.args((1,))
    assert call.result(0xFFFF_FFFF) == -1
