"""The native backend with hand-assembled images: calls, runtime calls, faults, timeouts."""

from __future__ import annotations

import io
import time

import pytest
from programs import basic

from tmebox.errors import SandboxError, SandboxExited, SandboxFault, SandboxTimeout
from tmebox.runtime.api import as_int32
from tmebox.runtime.memory import SandboxMemoryError


@pytest.fixture
def img(rt):
    return rt.load_unverified(basic())


def test_run_main_with_captured_stdout(rt, img):
    out = bytearray()
    sb = rt.spawn(img, stdout=out)
    assert sb.state == "parked"
    assert sb.run() == 42
    assert out == b"hello\n"
    with pytest.raises(SandboxExited):
        sb.run()
    with pytest.raises(SandboxExited):
        sb.call("neg")


def test_stdout_to_a_file_object(rt, img):
    out = io.BytesIO()
    assert rt.spawn(img, stdout=out).run() == 42
    assert out.getvalue() == b"hello\n"


def test_call_passes_six_arguments_and_returns_signed(rt, img):
    sb = rt.spawn(img)
    assert sb.call("args6", 1, 10, 100, 1000, 10000, 100000) == 654321
    assert sb.call("args6", -1, 0, 0, 0, 0, 0) == -1
    assert sb.call("args6", 2**64 - 1) == -1  # unsigned spelling of -1
    assert sb.call("neg") == -5
    assert as_int32(sb.call("neg")) == -5
    with pytest.raises(TypeError):
        sb.call("args6", 1, 2, 3, 4, 5, 6, 7)
    with pytest.raises(SandboxError, match="no function 'nope'"):
        sb.call("nope")
    with pytest.raises(TypeError):
        sb.call("args6", "1")
    # calls after run-less use keep working; main still runs afterwards
    assert sb.run() == 42


def test_registers_are_cleared_on_every_entry_and_base_is_forced(rt, img):
    a, b = rt.spawn(img), rt.spawn(img)
    a.call("taint")
    assert b.call("leak") == 0  # nothing crosses between tenants
    a.call("taint")
    assert a.call("leak") == 0  # nor between two calls of one tenant
    assert a.call("get_r14") == a.base
    assert b.call("get_r14") == b.base
    assert a.call("get_gsbase") == a.base
    assert a.base != b.base


def test_memory_alloc_read_write(rt, img):
    sb = rt.spawn(img)
    p = sb.alloc(5000)
    assert p >> 32 == sb.base >> 32
    sb.memory.write(p, bytes(range(1, 101)))
    assert sb.call("sum_bytes", p, 100) == sum(range(1, 101))
    assert sb.call("fill", p, 0x7A, 10) == 10
    assert sb.memory.read(p, 12) == b"z" * 10 + bytes([11, 12])
    sb.call("store64", p + 16, 0x1122334455667788)
    assert sb.memory.read_u64(p + 16) == 0x1122334455667788
    # forged upper halves mean the same window offset
    assert sb.memory.read((0x77 << 32) | (p & 0xFFFFFFFF), 2) == b"zz"
    with pytest.raises(SandboxMemoryError):
        sb.memory.read(sb.base + 0x100, 4)  # low guard
    with pytest.raises(SandboxMemoryError):
        sb.memory.write(sb.base + 0x10000 + 0x1000, b"x")  # code is read-only
    with pytest.raises(SandboxMemoryError):
        sb.memory.read(sb.base + 0xFFFF_FFF8, 16)
    q = sb.alloc(4096)
    sb.free(q, 4096)
    assert sb.alloc(4096) == q


def test_runtime_calls_inside_call(rt, img):
    out = bytearray()
    sb = rt.spawn(img, stdin=b"ping!", stdout=out)
    p = sb.alloc(64)
    assert sb.call("echo", p, 64) == 5
    assert out == b"ping!"
    assert sb.call("getpid_loop", 1000) == 1000
    assert sb.call("xmm_across_call", 0xDEADBEEF) == 0xDEADBEEF
    sb.call("mmap_page", 0x5151)


def test_exit_inside_a_call(rt, img):
    sb = rt.spawn(img)
    with pytest.raises(SandboxExited, match="status 7"):
        sb.call("quit", 7)
    assert sb.exit_status == 7
    with pytest.raises(SandboxExited):
        sb.call("neg")


@pytest.mark.parametrize("func, kind", [
    ("segv_guard", "segv"),
    ("segv_code", "segv"),
    ("segv_top", "segv"),
    ("ill", "illegal-instruction"),
    ("div0", "divide-error"),
    ("recurse", "stack-overflow"),
    ("rt_slot", "illegal-instruction"),
    ("bad_stack", "segv"),
])
def test_faults_are_contained(rt, img, func, kind):
    victim, bystander = rt.spawn(img), rt.spawn(img)
    with pytest.raises(SandboxFault) as e:
        victim.call(func)
    assert e.value.kind == kind
    assert e.value.address is not None and e.value.address >> 32 == victim.base >> 32
    assert victim.state == "dead"
    with pytest.raises(SandboxError, match="faulted or timed out"):
        victim.call("neg")
    assert bystander.call("args6", 1) == 1
    assert rt.spawn(img).run() == 42


def test_fault_message_names_the_instruction(rt, img):
    with pytest.raises(SandboxFault, match=r"sandbox fault: divide-error .*idiv"):
        rt.spawn(img).call("div0")


@pytest.mark.parametrize("func", ["spin", "spin_calls"])
def test_timeout_stops_endless_loops(rt, img, func):
    sb = rt.spawn(img, timeout=0.2)
    t = time.monotonic()
    with pytest.raises(SandboxTimeout):
        sb.call(func)
    assert time.monotonic() - t < 3
    assert sb.state == "dead"
    other = rt.spawn(img, timeout=0.2)
    assert other.call("getpid_loop", 100) == 100
    assert other.run() == 42


def test_destroyed_sandbox_refuses_everything(rt, img):
    sb = rt.spawn(img)
    sb.destroy()
    with pytest.raises(SandboxError, match="destroyed"):
        sb.call("neg")
    sb.destroy()  # idempotent
    assert rt.sandboxes == 0


def test_ctrl_c_leaves_a_spinning_sandbox(rt, img):
    import os
    import signal
    import threading

    sb = rt.spawn(img)
    main = threading.get_ident()
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sb.call("spin")
    finally:
        timer.cancel()
    assert sb.state == "dead"
    assert rt.spawn(img).call("args6", 3) == 3
    assert os.getpid() > 0


def test_start_up_that_returns_instead_of_parking_is_refused(rt):
    from asm_image import assemble

    plan = assemble("""
    .globl main
main:
    ret
""")
    # _start jumps straight to __tmebox_rt_exit instead of parking
    code = bytearray(plan.code)
    jmp = 0x20 - (plan.entry + 5)
    code[plan.entry:plan.entry + 5] = b"\xe9" + jmp.to_bytes(4, "little", signed=True)
    from dataclasses import replace

    img = rt.load_unverified(replace(plan, code=bytes(code)))
    with pytest.raises(SandboxError, match="instead of parking"):
        rt.spawn(img)
    assert rt.sandboxes == 0


def test_sandbox_fpu_state_does_not_reach_the_host(rt, img):
    import math

    sb = rt.spawn(img)
    before = (1.0 / 3.0, math.fsum([0.1] * 10), 2.0 ** 0.5)
    assert sb.call("mmx_dirty", 0x7FF0_0000_0000_0001) == 0  # MMX on, round-to-zero, FTZ
    assert (1.0 / 3.0, math.fsum([0.1] * 10), 2.0 ** 0.5) == before
    import ctypes

    libm = ctypes.CDLL("libm.so.6")
    libm.expl.restype = ctypes.c_longdouble
    libm.expl.argtypes = [ctypes.c_longdouble]
    assert abs(float(libm.expl(1.0)) - math.e) < 1e-15  # x87 code works in the host
