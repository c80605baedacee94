"""One sandbox on the CPU: its window's mappings, memory and register context."""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Sequence

from tmebox.runtime import layout as lay
from tmebox.runtime.backend import (
    FastCallSpec,
    FaultInfo,
)
from tmebox.runtime.host import CHostFunction
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory
from tmebox.runtime.native import windows
from tmebox.runtime.native.helper import (
    CTX_SIZE,
    Export,
    FastCallType,
    Host,
    LockType,
    ffi,
    lib,
    mmap,
)
from tmebox.runtime.native.image import NativeImage
from tmebox.runtime.native.windows import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    POOL,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from tmebox.runtime.snapshot import Run
from tmebox.trusted.image import Isolation
from tmebox.trusted.signature import FRAME_SSE, Signature, ValType

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

    from tmebox.runtime.backend import FastCall, Invoke, SandboxLock, SharedPool

__all__ = ["NativeEngine", "NativeMemory"]


# tmebox_fast.c's calling-convention codes: an integer's width | 0x80 if signed, or these;
# _RAW is an untyped export's (integers in, %rax out as a signed 64-bit int).
_RAW = 0
_KIND = {ValType.VOID: 1, ValType.BOOL: 2, ValType.F32: 3, ValType.F64: 4}
# restore() leaves the context's interrupt flag and tid (16 bytes from here) alone
_LIVE = ffi.offsetof("struct tmebox_ctx", "interrupt")
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
# Page moves per tenant before mremap copies instead: each move may split the window's
# mapping in up to four, and 32K tenants share the process's vm.max_map_count.
MAX_MOVES = 64
# struct tmebox_fd, and one with host -1 (Python services that descriptor)
_FD = struct.Struct("=iBBBB")
assert _FD.size == ffi.sizeof("struct tmebox_fd")
_FD_UNMARKED = _FD.pack(-1, 0, 0, 0, 0)


def _kind(t: ValType) -> int:
    return _KIND.get(t) or t.bits | (0x80 if t.signed else 0)


def _slots(sig: Signature) -> bytes:
    """The frame slot of each parameter (tmebox.toolchain.glue's layout)."""
    slots, ints, floats = [], 0, 0
    for t in sig.params:
        if t.is_float:
            slots.append(FRAME_SSE // 8 + floats)
            floats += 1
        else:
            slots.append(ints)
            ints += 1
    return bytes(slots)


def _host(fn: object, sig: Signature) -> object:
    """The C path's entry for one host function: kinds and frame slots of its parameters."""
    kinds, result = bytes(_kind(t) for t in sig.params), _kind(sig.result)
    if isinstance(fn, CHostFunction):
        return Host(None, fn.address, kinds, _slots(sig), result)
    return Host(fn, 0, kinds, _slots(sig), result)


class NativeMemory(SandboxMemory):
    def __init__(self, base: int, layout: lay.WindowLayout) -> None:
        super().__init__(layout.code_lo, layout.rw_lo, layout.rw_hi)
        self.base = base
        self._views: list[tuple[weakref.ref[memoryview], weakref.ref[object]]] = []
        # Window offsets [lo, hi) mapped copy-on-write from a snapshot (load_runs):
        # MADV_DONTNEED there would bring the snapshot's bytes back, not zeros.
        self.file_backed: list[tuple[int, int]] = []
        self.protected = False  # protect() made pages inaccessible (a memory_limit)
        self.moves = 0  # page moves by mremap: each splits the window's mapping
        self.remapped = False  # zero_pages mapped anonymous pages over file_backed ones

    def move(self, src: int, dst: int, n: int) -> None:
        # The kernel moves the page tables and leaves the source mapped and empty (reading
        # zeros, MREMAP_DONTUNMAP): no copy, no hole in the window. A copy where that does
        # not hold (snapshot pages, inaccessible pages) or after MAX_MOVES, so that a
        # tenant cannot split its window into more mappings than the process may have.
        if (self.moves < MAX_MOVES and not self.protected
                and not any(s < max(src, dst) + n and min(src, dst) < e
                            for s, e in self.file_backed)):
            got = lib.mremap(ffi.cast("void *", self.base + src), n, n,
                             ffi.cast("int", MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP),
                             ffi.cast("void *", self.base + dst))
            if int(ffi.cast("uintptr_t", got)) == self.base + dst:
                self.moves += 1
                return
        super().move(src, dst, n)

    def protect(self, lo: int, hi: int, accessible: bool) -> None:
        self.protected = True
        if hi > lo and lib.mprotect(ffi.cast("void *", self.base + lo), hi - lo,
                                    PROT_READ | PROT_WRITE if accessible else PROT_NONE):
            raise MemoryError(f"mprotect of window offsets [{lo:#x}, {hi:#x}) failed: "
                              f"{os.strerror(ffi.errno)}")

    def stack_hi(self, layout: lay.WindowLayout) -> int:
        """Where a stack may end for the runtime to read a return address or a frame
        there: the whole RW area, or, once pages may be inaccessible, below the heap."""
        return layout.heap if self.protected else layout.rw_hi

    def zero_pages(self, lo: int, hi: int) -> None:
        """Pages [lo, hi) (window offsets, page aligned) as a fresh mapping has them."""
        if any(s < hi and lo < e for s, e in self.file_backed):
            self.remapped = True  # not the snapshot's mappings any more
            mmap(self.base + lo, hi - lo, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        else:
            lib.madvise(ffi.cast("void *", self.base + lo), hi - lo, MADV_DONTNEED)

    def _read(self, off: int, n: int) -> bytes:
        return ffi.buffer(ffi.cast("char *", self.base + off), n)[:]

    def _write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        ffi.memmove(ffi.cast("char *", self.base + off), data, len(data))

    def _view(self, off: int, n: int, writable: bool) -> memoryview:
        exporter = ffi.buffer(ffi.cast("char *", self.base + off), n)
        view = memoryview(exporter) if writable else memoryview(exporter).toreadonly()
        # Every memoryview made from this one (numpy's too) holds the exporter: its life is
        # the life of the last of them. The one handed out is released at destroy.
        self._views.append((weakref.ref(view), weakref.ref(exporter)))
        return view

    def release_views(self) -> list[object]:
        """Release every view handed out; returns the buffers something still holds."""
        held = []
        for view_ref, exporter_ref in self._views:
            view = view_ref()
            if view is not None:
                view.release()
            del view
            exporter = exporter_ref()
            if exporter is not None:
                held.append(exporter)
        self._views = []
        return held

    def _release(self, off: int, n: int) -> None:
        lo, hi = lay.page_up(off), (off + n) & ~(lay.PAGE - 1)
        if lo >= hi:
            self._write(off, bytes(n))
            return
        if lo > off:
            self._write(off, bytes(lo - off))
        if off + n > hi:
            self._write(hi, bytes(off + n - hi))
        self.zero_pages(lo, hi)


class _KeptRuns:
    """A snapshot's pages in a sealed memfd, which every spawn maps copy-on-write: the
    spawns share its page cache pages until they write, and nothing writable.

    `ready` holds windows of destroyed spawns that are a new spawn's already: the runs
    mapped, every page dropped back to the memfd's or zero, the pointers moved (destroy);
    a spawn into one maps and copies nothing."""

    def __init__(self, image: NativeImage, runs: Sequence[Run]) -> None:
        import fcntl

        L = image.layout
        # window offsets of each run, and the pointer words of those that have any
        self.ranges = tuple((L.code_lo + r.at, L.code_lo + r.at + len(r.data)) for r in runs)
        # Mapped and patched in place by every spawn: refused unless whole pages of the RW
        # area, and whole aligned words inside their run.
        for (start, end), r in zip(self.ranges, runs, strict=True):
            if not (L.rw_lo <= start < end <= L.rw_hi and start % lay.PAGE == 0
                    and end % lay.PAGE == 0) or any(
                        at % 8 or at + 8 > len(r.data) for at in r.pointers):
                raise ValueError(f"snapshot run at window offset {start:#x} of {len(r.data)} "
                                 "bytes: not whole pages of the RW area, or a pointer word "
                                 "outside it")
        self.pointers = tuple((L.code_lo + r.at, ffi.from_buffer("uint32_t[]", r.pointers),
                               len(r.pointers)) for r in runs if r.pointers)
        fd = os.memfd_create("tmebox-snapshot", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.fd, self.offsets = fd, []
        self.ready: list[int] = []
        image.kept.add(self)
        weakref.finalize(self, _drop_kept, fd, self.ready)
        at = 0
        for run in runs:
            self.offsets.append(at)
            os.pwrite(fd, run.data, at)
            at += len(run.data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)

    def move_pointers(self, base: int, origin: int) -> None:
        """Add origin to every pointer word of the runs mapped in the window at base."""
        for start, offsets, n in self.pointers:
            lib.tmebox_relocate(ffi.cast("uint8_t *", base + start), offsets, n, origin)


def _drop_kept(fd: int, ready: list[int]) -> None:
    os.close(fd)
    while ready:
        POOL.release(ready.pop())


class NativeEngine:
    """One sandbox on the CPU: window k, its mappings, its register context."""

    pool: SharedPool | None = None  # host buffers come from the sandbox's own mmap area

    def __init__(self, image: NativeImage, window: int, warm: bool = False,
                 fill: bool = True, ready: _KeptRuns | None = None) -> None:
        self.image = image
        # The snapshot whose pages the window holds, mapped from its memfd (load_runs, or
        # a ready window): destroy can make the window ready for its next spawn.
        self.holds = ready
        self.window = window
        self.base = base = lay.window_base(window)
        L = image.layout
        self.layout = L
        self.bundle = 1 if image.plan.isolation == Isolation.CODE_DATA else 0
        if not warm:
            mmap(base + L.code_lo, image.code_size, PROT_READ | PROT_EXEC,
                  MAP_SHARED | MAP_FIXED, image.fd)
            mmap(base + L.rw_lo, L.rw_hi - L.rw_lo, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        if fill:
            data_at = ffi.cast("uint8_t *", base + L.data)
            ffi.memmove(data_at, image.data, len(image.data))
            if image.n_relocs:
                lib.tmebox_relocate(data_at, image.relocs, image.n_relocs, base + L.code_lo)
        self.memory = NativeMemory(base, L)
        if ready is not None:
            self.memory.file_backed = list(ready.ranges)
        # Calls tmebox_calls.c services on descriptors mark_fd names: none until then.
        self._direct: Any = None
        self._fds: Any = None  # the descriptor array once mark_fd made one
        self._nfds = 0
        ctx = lib.tmebox_ctx_new(base)
        if ctx == ffi.NULL:
            raise MemoryError("cannot allocate a sandbox context")
        self.ctx = ctx  # ctx.direct stays NULL until mark_fd: see there

    def enter(self, rip: int, rsp: int, args: tuple[int, ...], return_to: int | None) -> int:
        a = [x & 0xFFFF_FFFF_FFFF_FFFF for x in args] + [0] * (6 - len(args))
        c = self.ctx
        if return_to is not None:
            return lib.tmebox_call(c, rip, rsp, return_to, *a)
        for i in range(16):
            c.gpr[i] = 0
        for reg, v in zip((7, 6, 2, 1, 8, 9), a, strict=True):
            c.gpr[reg] = v
        c.gpr[4] = rsp
        c.rip = rip
        c.mode = 0
        return lib.tmebox_run(c)

    def invoker(self) -> tuple[Invoke, object]:
        return lib.tmebox_invoke, self.ctx

    def new_lock(self) -> SandboxLock:
        return LockType()

    def fast_call(self, spec: FastCallSpec) -> FastCall | None:
        L = self.layout
        return FastCallType(
            ctx=int(ffi.cast("uintptr_t", self.ctx)), rsp=spec.rsp, ret=spec.ret,
            thunk=spec.thunk,
            code_lo=L.code_lo, code_hi=L.code_hi, rw_lo=L.rw_lo, rw_hi=self.memory.stack_hi(L),
            bundle=bool(self.bundle), lock=spec.lock, exports=spec.exports,
            nested=spec.nested, slow=spec.slow, finish=spec.finish, caller=spec.caller,
            hosts=tuple(_host(fn, sig) for fn, sig in spec.imports),
            host_result=spec.host_result, host_error=spec.host_error,
            host_done=spec.host_done)

    def call_c_host(self, address: int, args: Sequence[object]) -> int:
        L = self.layout
        caller = ffi.new("uint64_t[3]", [self.base, L.code_lo, L.rw_hi])
        fn = ffi.cast("int64_t (*)(uint64_t *, int64_t, int64_t, int64_t, int64_t, int64_t, "
                      "int64_t)", address)
        values = [int(v) for v in args]  # type: ignore[call-overload]
        return int(fn(caller, *values, *[0] * (6 - len(values))))

    def fast_export(self, rip: int, sig: Signature | None) -> object | None:
        if sig is None:
            return Export(rip, -1, b"", _RAW)
        if ValType.BOOL in sig.params:
            return None  # bool(x) of anything: the Python path's
        kinds = bytes(_kind(t) for t in sig.params)
        if sig.uses_sse:
            return Export(rip, len(sig.params), kinds, _kind(sig.result), _slots(sig))
        return Export(rip, len(sig.params), kinds, _kind(sig.result))

    def last_stop(self) -> int:
        return self.ctx.reason

    def resume(self, result: int) -> int:
        return lib.tmebox_resume(self.ctx, result, self.bundle, self.layout.rw_lo,
                                 self.memory.stack_hi(self.layout))

    def result(self) -> int:
        return self.ctx.gpr[0]

    def syscall(self) -> tuple[int, tuple[int, int, int, int, int, int]]:
        g = ffi.unpack(self.ctx.gpr, 11)  # one conversion instead of seven
        return g[0], (g[7], g[6], g[2], g[10], g[8], g[9])

    def stack_pointer(self) -> int:
        return self.ctx.gpr[4]

    def fault(self) -> FaultInfo:
        c = self.ctx
        return FaultInfo(signo=c.fault_signo, address=c.fault_addr & OFFSET_MASK,
                         rip=c.fault_rip & OFFSET_MASK, rsp=c.fault_rsp & OFFSET_MASK)

    def deadline(self) -> int:
        return int(self.ctx.deadline_ns)

    def set_deadline(self, seconds: float | None) -> None:
        self.ctx.deadline_ns = (0 if seconds is None
                                else lib.tmebox_monotonic_ns() + max(1, int(seconds * 1e9)))

    def interrupt(self) -> None:
        if self.ctx is not None:  # destroyed (or between reset()'s two windows): nothing runs
            lib.tmebox_interrupt(self.ctx)

    def interrupted(self) -> bool:
        return bool(self.ctx.interrupt)

    def save(self) -> bytes:
        return ffi.buffer(self.ctx, CTX_SIZE)[:]

    def rebase(self, saved: object, lo: int, hi: int, delta: int) -> bytes:
        assert isinstance(saved, bytes)
        ctx = bytearray(saved)
        lib.tmebox_rebase(ffi.from_buffer(ctx), lo, hi, delta & 0xFFFF_FFFF_FFFF_FFFF,
                          self.base)
        return bytes(ctx)

    def mark_fd(self, fd: int, host: int, readable: bool, writable: bool, seekable: bool,
                whole: bool) -> None:
        # The C service (clock_gettime too) only for a sandbox whose descriptor table is
        # watched: one with a memory_limit never is, and tmebox_calls.c knows nothing of
        # the pages such a sandbox may not touch.
        if self.ctx is None:
            return  # destroyed: its descriptors are being closed
        d = self._direct
        if d is None:
            L = self.layout
            d = self._direct = ffi.new("struct tmebox_direct *", {
                "read_lo": L.code_lo, "write_lo": L.rw_lo, "hi": L.rw_hi, "nfds": 0,
                "bundle": self.bundle, "stack_lo": L.rw_lo, "stack_hi": L.rw_hi})
            self.ctx.direct = d
        if fd >= self._nfds:
            if host < 0:
                return
            n = max(64, 2 * (fd + 1))
            grown = ffi.new("struct tmebox_fd[]", n)
            ffi.memmove(grown, _FD_UNMARKED * n, n * _FD.size)
            if self._nfds:
                ffi.memmove(grown, d.fds, self._nfds * _FD.size)
            self._fds, d.fds, d.nfds = grown, grown, n  # _fds keeps it alive
            self._nfds = n
        ffi.memmove(self._fds + fd, _FD.pack(host, readable, writable, seekable, whole),
                    _FD.size)

    def keep_runs(self, runs: Sequence[Run]) -> _KeptRuns:
        return _KeptRuns(self.image, runs)

    def load_runs(self, runs: Sequence[Run], kept: object, origin: int) -> None:
        assert isinstance(kept, _KeptRuns)
        if self.holds is kept:
            return  # a ready window: all there already
        mapped = True
        for run, at, (start, end) in zip(runs, kept.offsets, kept.ranges, strict=True):
            try:
                mmap(self.base + start, end - start, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_FIXED, kept.fd, at)
                self.memory.file_backed.append((start, end))
            except OSError:
                # No mapping left (vm.max_map_count): a copy does the same, into anonymous
                # pages put back first in case the failed mmap took some of the range away
                # (if that fails too, the spawn fails: the host never writes into a hole).
                mmap(self.base + start, end - start, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
                self.memory.write(start, run.data)
                mapped = False
        kept.move_pointers(self.base, origin)
        if mapped:
            self.holds = kept

    def restore(self, snapshot: object) -> None:
        assert isinstance(snapshot, bytes)
        # All but interrupt and tid (0xf0-0xff), which another thread may be setting.
        c = ffi.cast("uint8_t *", self.ctx)
        ffi.memmove(c, snapshot[:_LIVE], _LIVE)
        ffi.memmove(c + _LIVE + 16, snapshot[_LIVE + 16:], len(snapshot) - _LIVE - 16)

    def destroy(self) -> None:
        if self.ctx is None:
            return
        lib.tmebox_ctx_free(self.ctx)
        self.ctx = None
        image, L = self.image, self.layout
        held = self.memory.release_views()
        if held:
            self._quarantine(held)
            return
        if self._make_ready():
            return
        for s, e in self.memory.file_backed:  # anonymous again, as a fresh window is
            self.memory.zero_pages(s, e)
        if self.memory.protected:  # and all of it usable
            self.memory.protect(L.rw_lo, L.rw_hi, True)
        if self.memory.moves:  # one mapping again, as a fresh window is
            mmap(self.base + L.rw_lo, L.rw_hi - L.rw_lo, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        # Zap every page the tenant touched: the next tenant finds the same zero-filled
        # RW area a fresh mapping gives (mprotect never changed it).
        if (image.fd >= 0 and len(image.warm) < windows.WARM_WINDOWS
                and lib.madvise(ffi.cast("void *", self.base + L.rw_lo), L.rw_hi - L.rw_lo,
                                MADV_DONTNEED) == 0):
            image.warm.append(self.window)
            return
        POOL.release(self.window)

    def _make_ready(self) -> bool:
        """The window as the next spawn of the snapshot it holds starts with it, if its
        mappings are still those load_runs made: every page of the RW area dropped (the
        memfd's again in the runs, zero elsewhere), then the pointers moved as load_runs
        moves them. False: the window is not the snapshot's (or not wanted; after mremap
        moved pages, so that its mappings are merged into one again)."""
        kept, mem, L = self.holds, self.memory, self.layout
        if (kept is None or mem.protected or mem.remapped or mem.moves or self.image.fd < 0
                or len(kept.ready) >= windows.WARM_WINDOWS
                or lib.madvise(ffi.cast("void *", self.base + L.rw_lo), L.rw_hi - L.rw_lo,
                               MADV_DONTNEED) != 0):
            return False
        kept.move_pointers(self.base, self.base + L.code_lo)
        kept.ready.append(self.window)
        return True

    def _quarantine(self, held: list[object]) -> None:
        """Views the host still uses: fresh zero pages under them, and the window goes back
        to the pool only once the last of them is gone."""
        L = self.layout
        mmap(self.base + L.code_lo, L.rw_hi - L.code_lo, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        pending = [len(held)]
        window = self.window

        def gone() -> None:
            pending[0] -= 1
            if pending[0] == 0:
                POOL.release(window)

        for exporter in held:
            weakref.finalize(exporter, gone)


