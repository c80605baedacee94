"""Snapshots and reset, on both backends: sandboxes start in the state a snapshot saw,
share nothing writable, and their pointers are their own window's (docs/runtime.md,
"Snapshots")."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.errors import SandboxError, SandboxFault, SandboxInterrupted, TmeboxError

SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static unsigned char *table;
static char *big;
static long counter;
static long (*fn)(long);
static long *self_ptr;
long twice(long v) { return 2 * v; }
long init(long n) {
    table = malloc(n);
    for (long i = 0; i < n; i++) table[i] = i & 0xff;
    big = malloc(1 << 20);                  /* mmapped */
    memset(big, 7, 8192);
    counter = 100;
    fn = twice;
    self_ptr = &counter;
    return 0;
}
long check(long i) { return table[i] + counter + fn(1) + big[4096]; }
long pointers_agree(void) {                 /* stored pointers == addresses taken now */
    return fn == twice && self_ptr == &counter && (long)self_ptr >> 32 == (long)&fn >> 32;
}
long bump(void) { return ++counter; }
long churn(long n) {                        /* the heap after the snapshot still works */
    void *keep[64] = {0};
    for (long i = 0; i < n; i++) {
        free(keep[i % 64]);
        keep[i % 64] = malloc(16 + (i * 37) % 5000);
        if (!keep[i % 64]) return -1;
        memset(keep[i % 64], 1, 16);
    }
    char *large = malloc(300000);
    if (!large) return -2;
    large[299999] = 1;
    free(large);
    return table[3] + (big[0] == 7);
}
long refresh(void) {                       /* memory given back reads as zero again */
    char *page = (char *)(((unsigned long)big + 4096) & ~4095ul);
    if (page[0] != 7) return -1;
    madvise(page, 4096, MADV_DONTNEED);
    long a = page[0];
    munmap(page + 4096, 4096);
    char *p = mmap(page + 4096, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    return p == MAP_FAILED ? -2 : a + p[0] + 1;
}
long crash(void) { return *(volatile long *)8; }
long spin(void) { for (volatile long i = 0;; i++) {} }
int main(void) { printf("main counter=%ld %ld\n", counter, fn ? fn(21) : -1); return 0; }
"""
BACKENDS = ["native", "tme"]


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "snap", SRC)


@pytest.fixture(params=BACKENDS)
def rt(request):
    with tmebox.Runtime(backend=request.param, max_sandboxes=16) as runtime:
        yield runtime


def initialised(rt, image):
    sb = rt.spawn(rt.load(image))
    assert sb.call("init", 1000) == 0
    return sb


def test_spawns_start_in_the_snapshots_state(rt, image):
    src = initialised(rt, image)
    snap = src.snapshot()
    assert 8192 <= snap.size <= 256 << 10
    kids = [rt.spawn(snap) for _ in range(3)]
    for k in kids:
        assert k.base != src.base
        assert k.call("check", 5) == 5 + 100 + 2 + 7
        assert k.call("pointers_agree") == 1
        assert k.call("churn", 2000) == 3 + 1
    assert src.call("pointers_agree") == 1


def test_spawns_share_nothing_writable(rt, image):
    src = initialised(rt, image)
    snap = src.snapshot()
    a, b = rt.spawn(snap), rt.spawn(snap)
    assert a.call("bump") == 101 and a.call("bump") == 102
    assert b.call("bump") == 101
    assert src.call("bump") == 101
    p = a.symbol("counter") if "counter" in a.image.plan.data_symbols else None
    if p is not None:
        a.memory.write_u64(p, 999)
        assert b.memory.read_u64(b.symbol("counter")) == 101


def test_freed_memory_reads_zero_and_the_next_tenant_sees_none_of_the_snapshot(rt, image):
    snap = initialised(rt, image).snapshot()
    kid = rt.spawn(snap)
    assert kid.call("refresh") == 1  # the same range again, all zeros
    kids = [rt.spawn(snap) for _ in range(4)]
    for k in kids:
        k.destroy()
    kid.destroy()
    plain = [rt.spawn(snap.image) for _ in range(6)]  # into the windows just left
    checked = 0
    for sb in plain:
        used = sb._proc.brk
        for run in snap.runs:
            for page in range(0, len(run.data), 4096):
                off = sb._layout.code_lo + run.at + page
                if off >= used and not any(s <= off < e for s, e in sb._proc.maps):
                    assert sb.memory.read(sb.base + off, 4096) == bytes(4096), hex(off)
                    checked += 1
    assert checked > 0


def test_the_snapshot_outlives_its_sandbox(rt, image):
    src = initialised(rt, image)
    snap = src.snapshot()
    src.destroy()
    assert rt.spawn(snap).call("check", 7) == 7 + 100 + 2 + 7


def test_run_continues_from_the_snapshots_registers(rt, image):
    src = initialised(rt, image)
    out = bytearray()
    kid = rt.spawn(src.snapshot(), stdout=out)
    assert kid.run() == 0
    assert out == b"main counter=100 42\n"


def test_reset_returns_to_the_snapshot(rt, image):
    kid = rt.spawn(initialised(rt, image).snapshot())
    kid.call("bump")
    with pytest.raises(SandboxFault):
        kid.call("crash")
    assert kid.state == "dead"
    old_memory = kid.memory
    kid.reset()
    assert kid.state == "parked" and kid.call("check", 1) == 1 + 100 + 2 + 7
    with pytest.raises(tmebox.SandboxDestroyed):
        old_memory.read(kid.base, 8)  # the old window is not ours any more


def test_reset_without_a_snapshot_runs_start_up_again(rt, image):
    out = bytearray()
    sb = rt.spawn(rt.load(image), stdout=out)
    sb.call("init", 10)
    sb.interrupt()
    with pytest.raises(SandboxInterrupted):
        sb.call("spin")
    sb.reset()  # a new context: the interrupt is gone
    assert sb.run() == 0
    assert out == b"main counter=0 -1\n"
    sb.reset()  # after exit as well
    assert sb.state == "parked" and sb.call("bump") == 1


def test_what_cannot_be_snapshotted_or_spawned(rt, image, tmp_path):
    img = rt.load(image)
    (tmp_path / "f").write_text("x")
    sb = rt.spawn(img, dirs={"/d": str(tmp_path)})
    sb.snapshot()  # preopens are fine: they are not descriptors of the guest
    dead = rt.spawn(img)
    with pytest.raises(SandboxFault):
        dead.call("crash")
    with pytest.raises(SandboxError, match="faulted"):
        dead.snapshot()
    snap = initialised(rt, image).snapshot()
    with pytest.raises(TypeError, match="snapshot's"):
        rt.spawn(snap, argv=["x"])
    with tmebox.Runtime(backend=rt.backend_name) as other, \
            pytest.raises(TmeboxError, match="another Runtime"):
        other.spawn(snap)


def test_memory_limit_holds_for_snapshot_spawns(rt, image):
    snap = initialised(rt, image).snapshot()
    kid = rt.spawn(snap, memory_limit=2 << 20)
    assert kid.call("churn", 100) == 4  # a 300 KB block still fits
    tight = rt.spawn(snap, memory_limit=1 << 20)  # init already holds ~1 MiB
    assert tight.call("churn", 10) < 0  # a malloc failed


def test_without_mappings_left_a_spawn_copies(image, monkeypatch):
    from tmebox.runtime.native import engine as native_engine

    real = native_engine.mmap

    def no_file_mappings(addr, length, prot, flags, fd=-1, offset=0):
        if fd >= 0 and not prot & 4:  # a snapshot's memfd (the image's code is PROT_EXEC)
            raise OSError(12, "no mapping left")
        return real(addr, length, prot, flags, fd, offset)

    with tmebox.Runtime(max_sandboxes=4) as rt:
        snap = initialised(rt, image).snapshot()
        monkeypatch.setattr(native_engine, "mmap", no_file_mappings)
        kid = rt.spawn(snap)
        assert kid._mem.file_backed == []
        assert kid.call("check", 9) == 9 + 100 + 2 + 7 and kid.call("pointers_agree") == 1


def _as_spawned(snap, sb, off: int) -> bytes:
    """The page at window offset off as a spawn of snap starts with it: the snapshot's
    (its pointers moved to sb's window) or zeros."""
    L = sb._layout
    for run in snap.runs:
        start = L.code_lo + run.at
        if start <= off < start + len(run.data):
            page = bytearray(run.data[off - start:off - start + 4096])
            words = memoryview(page).cast("Q")
            for at in run.pointers:
                if off - start <= at < off - start + 4096:
                    words[(at - (off - start)) // 8] += sb.base + L.code_lo
            return bytes(page)
    return bytes(4096)


@pytest.mark.parametrize("how", ["plain", "remapped", "limited", "moved"])
def test_a_spawn_into_a_window_left_by_a_tenant_sees_none_of_its_writes(rt, image, how):
    """The window a destroyed spawn of the snapshot leaves may go to the next spawn of the
    same snapshot as it is (native: a ready window): every page the tenant wrote, in the
    snapshot's runs (pointer pages too) and outside, is the snapshot's or zero again."""
    snap = initialised(rt, image).snapshot()
    kid = rt.spawn(snap, memory_limit=4 << 20 if how == "limited" else None)
    if how == "remapped":
        assert kid.call("refresh") == 1  # part of a run is anonymous memory now
    if how == "moved":  # mremap moved pages: the window's mapping is split
        a, b = kid.alloc(8192), kid.alloc(8192)
        kid._mem.move(a - kid.base, b - kid.base, 8192)
    L = kid._layout
    pages = [p for s, e in kid._proc.owned() for p in range(s, e, 4096)]
    native = rt.backend_name == "native"
    # pages outside everything the sandbox owns (natively its code can write them all)
    far = [L.heap + (64 << 20), L.rw_hi - 4096] if native and how != "limited" else []
    for p in pages + far:
        kid._mem.write(p, b"\xa5" * 4096)
    assert kid.call("bump") != 101  # the tenant's own view of its secrets
    base, window = kid.base, kid.base >> 32
    kid.destroy()
    if native:
        assert snap.kept.ready == ([window] if how == "plain" else [])
    nxt = rt.spawn(snap)
    if native:
        assert nxt.base == base  # the same window again
    for p in pages + far:
        assert nxt._mem.read(p, 4096) == _as_spawned(snap, nxt, p), hex(p)
    assert nxt.call("check", 5) == 5 + 100 + 2 + 7 and nxt.call("pointers_agree") == 1
    plain = rt.spawn(snap.image)  # a plain spawn never takes a ready window
    assert not native or plain.base != base


def test_ready_windows_go_back_with_their_snapshot(image):
    """Ready windows are the snapshot's: dropping it, or closing the Runtime, releases
    them to the pool (PROT_NONE), and no later spawn finds its pages."""
    import gc

    from tmebox.runtime.native.windows import POOL

    with tmebox.Runtime(max_sandboxes=8) as rt:
        snap = initialised(rt, image).snapshot()
        kids = [rt.spawn(snap) for _ in range(3)]
        for k in kids:
            k.destroy()
        ready = list(snap.kept.ready)
        assert len(ready) == 3
        free = POOL.free_count
        del snap, k, kids
        gc.collect()
        assert POOL.free_count == free + 3
        snap = initialised(rt, image).snapshot()
        rt.spawn(snap).destroy()
        assert len(snap.kept.ready) == 1
        free = POOL.free_count
    assert POOL.free_count == free + 1 + 2  # + the two initialised() sandboxes' windows


@pytest.mark.parametrize("bad", ["pointer past the run", "unaligned pointer", "below the RW area",
                                 "past the RW area", "not whole pages"])
def test_runs_that_would_patch_or_map_outside_the_window_are_refused(image, bad):
    """A spawn maps each run and adds to its pointer words in place, in C: the backend's
    copy of a snapshot refuses runs that are not whole pages of the RW area and pointer
    offsets that are not whole aligned words inside their run."""
    from array import array

    from tmebox.runtime.snapshot import Run

    with tmebox.Runtime(max_sandboxes=4) as rt:
        src = initialised(rt, image)
        snap = src.snapshot()
        run = snap.runs[0]
        L = src._layout
        forged = {
            "pointer past the run": Run(run.at, run.data, array("I", [len(run.data) - 4])),
            "unaligned pointer": Run(run.at, run.data, array("I", [12])),
            "below the RW area": Run(L.rw_lo - L.code_lo - 4096, run.data[:4096], array("I")),
            "past the RW area": Run(L.rw_hi - L.code_lo, run.data[:4096], array("I")),
            "not whole pages": Run(run.at, run.data[:100], array("I")),
        }[bad]
        with pytest.raises(ValueError, match="snapshot run"):
            src._engine.keep_runs((forged,))
