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
    # %r10 carries at most the callee's own address (native: the host calls through it)
    assert b.call("entry_r10") in (0, b._lookup("entry_r10"))
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
    from tmebox.trusted.record import replace

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


def test_pending_x87_exception_stays_in_the_sandbox(rt, img):
    """A sandbox that unmasks x87 exceptions and leaves one pending must not crash the host.

    The next waiting x87/MMX instruction raises #MF (SIGFPE); if that is the host's exit
    path, the whole process dies: the exit path clears the exception flags first.
    """
    import math

    sb = rt.spawn(img)
    assert sb.call("x87_pending", 0) == 0  # returns with the exception still pending
    with pytest.raises(SandboxFault) as e:
        sb.call("x87_pending", 1)  # raised inside the sandbox by its own fwait
    assert e.value.kind == "divide-error"
    other = rt.spawn(img)
    assert other.call("x87_pending", 0) == 0
    assert math.isclose(math.fsum([0.1] * 10), 1.0)


# The window pool. These use a pool of their own (the process-wide one sees its windows as
# host mappings) and unmap what it reserved afterwards.

@pytest.fixture
def own_pool():
    import ctypes

    from tmebox.runtime import layout as lay
    from tmebox.runtime.native.windows import WindowPool
    from tmebox.trusted import abi

    pool = WindowPool()
    yield pool
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    for k in pool.windows:
        assert libc.munmap(lay.window_base(k), abi.WINDOW_SIZE) == 0


def _window_lines(windows):
    from tmebox.runtime import layout as lay
    from tmebox.trusted import abi

    return sum(int(line.split("-", 1)[0], 16) >> abi.WINDOW_SHIFT in windows
               for line in lay.read_host_maps())


def test_pool_grows_geometrically_instead_of_rereading_the_maps(own_pool):
    import math

    from tmebox.runtime import layout as lay

    got = []
    for _ in range(1000):
        own_pool.ensure(1)
        got.append(own_pool.acquire())
    assert len(set(got)) == 1000
    # 64 windows per read (the old pool) would have read the maps 16 times.
    assert own_pool.maps_reads <= math.ceil(math.log2(1000 / 64)) + 1
    host = lay.host_mapped_windows(lay.read_host_maps()) - own_pool.windows
    for k in got:
        assert not {k - 1, k, k + 1} & host
        assert lay.FIRST_WINDOW <= k <= lay.LAST_WINDOW
    # Released windows come back lowest first, and reserving more reads nothing.
    for k in reversed(got):
        own_pool.release(k)
    reads = own_pool.maps_reads
    again = [own_pool.acquire() for _ in range(3)]
    assert again == sorted(got)[:3]
    own_pool.ensure(own_pool.free_count)
    assert own_pool.maps_reads == reads


def test_pool_growth_respects_the_limit(own_pool):
    own_pool.ensure(3, limit=5)
    assert len(own_pool.windows) == 5
    own_pool.ensure(1, limit=5)
    assert own_pool.maps_reads == 1


def test_window_the_host_maps_after_the_maps_were_read_is_not_handed_out(own_pool, monkeypatch):
    from tmebox.runtime import layout as lay
    from tmebox.runtime.native.helper import mmap as _mmap
    from tmebox.runtime.native.windows import (
        MAP_ANONYMOUS,
        MAP_FIXED_NOREPLACE,
        MAP_PRIVATE,
        PROT_READ,
    )

    stale = lay.read_host_maps()
    first, end = next(lay.free_window_runs(lay.host_mapped_windows(stale)))
    assert end - first >= 8
    taken = first + 3
    # The host maps a page inside the run after the pool's (stale) look at the maps.
    addr = _mmap(lay.window_base(taken) + (5 << 20), lay.PAGE, PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    try:
        monkeypatch.setattr(lay, "read_host_maps", lambda: stale)
        own_pool.ensure(8, limit=8)
        assert taken not in own_pool.windows
        assert {first, first + 1, first + 2, first + 4} <= own_pool.windows
        handed = {own_pool.acquire() for _ in range(8)}
        assert taken not in handed
        monkeypatch.undo()
        # The host's page is intact: nothing was mapped over it.
        assert _window_lines({taken}) == 1
    finally:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
        libc.munmap(addr, lay.PAGE)


def test_spawn_and_destroy_many_leave_no_window_mappings():
    import tmebox
    from tmebox.runtime.native.windows import POOL

    with tmebox.Runtime(max_sandboxes=300) as rt:
        img = rt.load_unverified(basic())
        POOL.ensure(300)  # the pool's own growth would add reservation lines below
        before = _window_lines(POOL.windows)
        sbs = [rt.spawn(img) for _ in range(300)]
        assert _window_lines(POOL.windows) >= before + 2 * 300
        for sb in sbs[::2] + sbs[1::2]:
            sb.destroy()
    # Closing the Runtime released its image's warm windows too.
    assert _window_lines(POOL.windows) == before
