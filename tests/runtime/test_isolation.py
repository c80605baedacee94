"""Adversarial: tenants that write every address they can form never touch anyone else."""

from __future__ import annotations

import contextlib
import ctypes
import random
import threading
import time

import pytest
from programs import basic, scribbler

from tmebox.errors import SandboxError, SandboxExited
from tmebox.runtime import layout as lay
from tmebox.runtime.native.windows import MAPS_PER_WINDOW, WARM_WINDOWS

CANARY = bytes(random.Random(7).randrange(256) for _ in range(4096))


def test_scribblers_never_change_a_neighbour_or_the_host(rt):
    host = ctypes.create_string_buffer(CANARY, len(CANARY))
    host_bytes = bytearray(CANARY)
    neighbour = rt.spawn(rt.load_unverified(basic()))
    buf = neighbour.alloc(len(CANARY))
    neighbour.memory.write(buf, CANARY)
    data_before = neighbour.memory.read(neighbour.base + 0x10000 + 0x12000, 4096)
    img = rt.load_unverified(scribbler())
    outcomes = set()
    for seed in range(24):
        sb = rt.spawn(img, timeout=2.0, stdout=bytearray(), stderr=bytearray())
        try:
            sb.call("scribble", seed * 7919 + 1, 1500)
            outcomes.add("returned")
            sb.call("smash", seed)
            outcomes.add("smash returned")
        except SandboxError as e:  # faults and timeouts are expected outcomes
            outcomes.add(type(e).__name__)
        finally:
            sb.destroy()
    assert neighbour.memory.read(buf, len(CANARY)) == CANARY
    assert neighbour.memory.read(neighbour.base + 0x10000 + 0x12000, 4096) == data_before
    assert host.raw == CANARY
    assert host_bytes == CANARY
    assert neighbour.call("sum_bytes", buf, 64) == sum(CANARY[:64])
    assert neighbour.run() == 42
    # the smashed stack sent control somewhere random: it must have ended in a fault
    assert outcomes & {"SandboxFault", "SandboxTimeout", "SandboxExited"}


def test_forged_pointers_stay_in_the_callers_window(rt):
    img = rt.load_unverified(basic())
    a, b = rt.spawn(img), rt.spawn(img)
    pa, pb = a.alloc(4096), b.alloc(4096)
    b.memory.write(pb, b"B" * 8)
    # a is handed b's full pointer: only its low 32 bits count, in a's window
    a.call("store64", pb, 0x4141414141414141)
    assert b.memory.read(pb, 8) == b"B" * 8
    assert a.memory.read((a.base & ~0xFFFFFFFF) | (pb & 0xFFFFFFFF), 8) == b"A" * 8
    assert a.call("load64", pb) == 0x4141414141414141
    assert pa >> 32 != pb >> 32


def test_many_sandboxes_alive_at_once_and_no_leaks(rt):
    img = rt.load_unverified(basic())
    maps_before = len(lay.read_host_maps())
    sbs = [rt.spawn(img) for _ in range(1100)]
    assert len({sb.base for sb in sbs}) == 1100
    for i, sb in enumerate(sbs):
        p = sb.alloc(16)
        sb.memory.write(p, i.to_bytes(8, "little"))
        assert sb.call("load64", p) == i
    rng = random.Random(3)
    rng.shuffle(sbs)
    for sb in sbs[:550]:
        sb.destroy()
    again = [rt.spawn(img) for _ in range(300)]
    assert all(sb.call("args6", 5) == 5 for sb in again)
    for sb in sbs[550:] + again:
        sb.destroy()
    assert rt.sandboxes == 0
    # destroyed windows stay mapped for the image's next spawns, boundedly ...
    assert len(lay.read_host_maps()) <= maps_before + MAPS_PER_WINDOW * WARM_WINDOWS + 2
    rt.close()
    # ... and are given back with the image
    assert len(lay.read_host_maps()) <= maps_before + 2


def test_threads_run_different_sandboxes_concurrently(rt):
    img = rt.load_unverified(basic())
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            sb = rt.spawn(img, timeout=5.0)
            p = sb.alloc(64)
            for i in range(2000):
                sb.call("store64", p, i * k)
                assert sb.call("load64", p) == i * k
            assert sb.call("getpid_loop", 200) == 200
            victim = rt.spawn(img)
            with pytest.raises(SandboxError):
                victim.call("segv_guard")  # a fault on this thread's alternate stack
            assert sb.call("args6", k) == k
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_one_sandbox_shared_by_threads_is_serialised(rt):
    sb = rt.spawn(rt.load_unverified(basic()))
    p = sb.alloc(64)
    results: list[int] = []

    def worker(k: int) -> None:
        for _ in range(500):
            sb.call("store64", p, k)
            results.append(sb.call("getpid_loop", 3))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [3] * 1500


def test_a_reused_window_starts_clean(rt):
    img = rt.load_unverified(basic())
    first = rt.spawn(img)
    p = first.alloc(8192)
    first.memory.write(p, b"secret!!" * 1024)
    first.call("store64", first.base + 0x10000 + 0x12000 + 64, 0x5EC2E7)  # its data
    base = first.base
    first.destroy()
    second = rt.spawn(img)
    assert second.base == base  # the warm window of the same image
    assert second.memory.read(p, 8192) == bytes(8192)
    assert second.call("load64", base + 0x10000 + 0x12000 + 64) == 0
    assert second.run() == 42


def test_timeouts_on_several_threads_hit_only_their_own_sandbox(rt):
    import time

    from tmebox.errors import SandboxTimeout

    img = rt.load_unverified(basic())
    outcome: dict[int, str] = {}

    def spinner(k: int) -> None:
        sb = rt.spawn(img, timeout=0.3)
        try:
            sb.call("spin_calls" if k % 2 else "spin")
        except SandboxTimeout:
            outcome[k] = "timeout"

    t0 = time.monotonic()
    threads = [threading.Thread(target=spinner, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    worker = rt.spawn(img, timeout=10.0)
    while any(t.is_alive() for t in threads):
        assert worker.call("getpid_loop", 50) == 50  # never hit by their timers
    for t in threads:
        t.join()
    assert outcome == {k: "timeout" for k in range(4)}
    assert time.monotonic() - t0 < 10



HIJACK = r"""
#include <stdint.h>
#include <unistd.h>
volatile long landed;
/* Exits with the low byte of the window it runs in (from a %rip-relative address). */
void landing(void) { landed = 1; _exit((int)((uintptr_t)&landed >> 32) & 0xff); }
/* Overwrites its own return address (above the saved frame pointer) and returns. */
__attribute__((noinline)) long hijack(uint64_t target)
{
    uint64_t *slot = (uint64_t *)__builtin_frame_address(0) + 1;
    *slot = target;
    __asm__ volatile("" ::: "memory");
    return 1;
}
long try_return_to(uint64_t target) { return hijack(target) + 1; }
long get_landed(void) { return landed; }
"""


def test_a_forged_return_address_stays_in_the_window(build_image, rt):
    """code+data: a return address the tenant rewrote is masked into its own window."""
    hits = []
    host_code = ctypes.CFUNCTYPE(None)(lambda: hits.append("host"))
    img = rt.load(build_image(HIJACK, mode="code+data", name="hijack"))
    neighbour = rt.spawn(img)
    theirs = neighbour.base + neighbour._layout.code_lo + img.plan.exports["landing"]
    # the neighbour's `landing`; the same with another high half; 5 bytes into it
    for target in (theirs, (0xDEAD << 32) | (theirs & 0xFFFFFFFF), theirs + 5):
        sb = rt.spawn(img)
        assert (sb.base >> 32) & 0xFF != (neighbour.base >> 32) & 0xFF
        with pytest.raises(SandboxExited) as e:
            sb.call("try_return_to", target)
        assert e.value.status == (sb.base >> 32) & 0xFF  # landed in its own copy
        sb.destroy()
    for target in (ctypes.cast(host_code, ctypes.c_void_p).value, 0, 0x7FFFFFFFFFFF):
        sb = rt.spawn(img, timeout=2.0, stdout=bytearray(), stderr=bytearray())
        with contextlib.suppress(SandboxError):
            sb.call("try_return_to", target)
        sb.destroy()
    assert hits == []
    assert neighbour.call("get_landed") == 0  # nobody ran the neighbour's code


WATCH = r"""
#include <stdint.h>
/* 1 if *p changed while it spun for `spins` iterations. */
long watch(volatile uint64_t *p, long spins)
{
    uint64_t first = *p;
    for (long i = 0; i < spins; i++)
        if (*p != first)
            return 1;
    return 0;
}
"""


def test_host_writes_wait_while_the_sandbox_runs(build_image, rt):
    """Nothing but the sandbox's own thread writes its memory while it runs (the return
    group relies on it): sb.memory.write from another thread waits for the call."""
    sb = rt.spawn(rt.load(build_image(WATCH, mode="code+data", name="watch")))
    buf = sb.alloc(4096)
    sb.memory.write_u64(buf, 1)
    started = threading.Event()
    written: list[float] = []

    def writer() -> None:
        started.wait()
        time.sleep(0.02)
        sb.memory.write_u64(buf, 2)
        written.append(time.monotonic())

    t = threading.Thread(target=writer)
    t.start()
    started.set()
    changed = sb.call("watch", buf, 300_000_000)  # ~0.1-0.5 s of spinning
    returned = time.monotonic()
    t.join()
    assert changed == 0  # the tenant never saw the host's write while it ran
    assert written and written[0] >= returned
    assert sb.memory.read_u64(buf) == 2
