"""The native backend: sandbox code runs on the CPU, confined to its 4 GiB window.

Windows are reserved PROT_NONE in big runs; a sandbox maps its image's shared
code (one sealed memfd per image) and one RW|NORESERVE mapping from the end
of the code to the top guard (docs/design.md "Window layout").
"""

from __future__ import annotations

import errno
import fcntl
import functools
import heapq
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tmebox.errors import OutOfSandboxes, TmeboxError
from tmebox.runtime import layout as lay
from tmebox.runtime.backend import FaultInfo
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory
from tmebox.trusted import abi

try:
    from tmebox.runtime._native import ffi, lib
except ImportError as e:  # pragma: no cover - depends on the installation
    raise TmeboxError(
        "the native sandbox helper is not built; run `pip install -e .` in the tmebox "
        f"checkout ({e})"
    ) from e

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x4000, 0x100000
MADV_DONTNEED = 4
MAP_FAILED = (1 << 64) - 1
RESERVE_CHUNK = 64  # the pool's first growth step, in windows
MAX_GROWTH = 8192  # windows (32 TiB) one growth step reserves at most
WARM_WINDOWS = 256  # per image: destroyed windows kept mapped for its next spawns
MAPS_PER_WINDOW = 3  # code, RW, and the PROT_NONE guard between windows
MAP_COUNT_SLACK = 2000  # mappings the host itself may still create

_init_status = lib.tmebox_init()
if _init_status != 0:
    raise TmeboxError(
        f"the native sandbox helper cannot run here ({os.strerror(-_init_status)}): it needs "
        "x86-64 with FSGSBASE enabled by the kernel and XSAVE"
    )
CTX_SIZE = lib.tmebox_ctx_size()


def _mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1) -> int:
    p = lib.mmap(ffi.cast("void *", addr), length, prot, flags, fd, 0)
    got = int(ffi.cast("uintptr_t", p))
    if got == MAP_FAILED:
        err = ffi.errno
        raise OSError(err, f"mmap({addr:#x}, {length:#x}): {os.strerror(err)}")
    return got


class WindowPool:
    """Process-wide reservation of free windows (all Runtimes share it).

    The pool grows geometrically: each growth step reserves as many windows as it
    already holds (at least RESERVE_CHUNK, at most MAX_GROWTH), so n windows cost
    O(log n) reads of /proc/self/maps. That read is only needed to keep away from the
    host's mappings; the pool's own reservations are its own record (`_reserved`), and a
    host mapping made after the read makes MAP_FIXED_NOREPLACE fail with EEXIST.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []  # a min-heap, so acquire() hands out the lowest window
        self._reserved: set[int] = set()
        self._frozen: frozenset[int] = frozenset()
        self.maps_reads = 0  # growth steps that read the host's maps (tests check it)

    @property
    def windows(self) -> frozenset[int]:
        """Every window reserved so far (free or in use)."""
        return self._frozen

    @property
    def free_count(self) -> int:
        return len(self._free)

    def ensure(self, n: int, limit: int | None = None) -> None:
        """Reserve windows until at least n are free.

        A growth step reserves up to `limit` windows beyond the n (the caller's
        max_sandboxes), so a small Runtime does not take address space it cannot use.
        """
        with self._lock:
            if len(self._free) >= n:
                return
            extra = min(max(RESERVE_CHUNK, len(self._reserved)), MAX_GROWTH)
            if limit is not None:
                extra = min(extra, max(limit - n, 0))
            want = n - len(self._free) + extra
            self.maps_reads += 1
            used = lay.host_mapped_windows(lay.read_host_maps()) - self._reserved
            got: list[int] = []
            for start, end in lay.free_window_runs(used):
                run = [k for k in range(start, end) if k not in self._reserved]
                if not run:
                    continue
                run = run[:want - len(got)]
                got += self._reserve_run(run)
                if len(got) >= want:
                    break
            if got:
                self._reserved.update(got)
                self._frozen = frozenset(self._reserved)
                self._free += got
                heapq.heapify(self._free)
            if len(self._free) < n:
                raise OutOfSandboxes(
                    f"only {len(self._free)} windows of 4 GiB are free in this process's "
                    f"address space, {n} were asked for")

    @staticmethod
    def _reserve_run(run: list[int]) -> list[int]:
        # A run may have holes where windows are already ours; map contiguous pieces.
        got: list[int] = []
        i = 0
        while i < len(run):
            j = i
            while j + 1 < len(run) and run[j + 1] == run[j] + 1:
                j += 1
            first, count = run[i], j - i + 1
            try:
                _mmap(lay.window_base(first), count << abi.WINDOW_SHIFT, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
                got += range(first, first + count)
            except OSError as e:
                if e.errno != errno.EEXIST or count == 1:
                    if e.errno not in (errno.EEXIST, errno.ENOMEM):
                        raise
                else:
                    # Someone mapped into the run since we read the maps: go one by one.
                    got += WindowPool._reserve_run_each(range(first, first + count))
            i = j + 1
        return got

    @staticmethod
    def _reserve_run_each(windows: range) -> list[int]:
        got = []
        for k in windows:
            try:
                _mmap(lay.window_base(k), abi.WINDOW_SIZE, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
                got.append(k)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOMEM):
                    raise
        return got

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise OutOfSandboxes("no reserved window is free")
            return heapq.heappop(self._free)

    def release(self, k: int) -> None:
        """Drop everything mapped in window k and hand it out again later."""
        base = lay.window_base(k)
        _mmap(base + abi.GUARD_SIZE, abi.WINDOW_SIZE - 2 * abi.GUARD_SIZE, PROT_NONE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        with self._lock:
            heapq.heappush(self._free, k)


POOL = WindowPool()


def check_map_count(max_sandboxes: int) -> None:
    """Raise OutOfSandboxes (with the fix) if vm.max_map_count cannot hold that many windows."""
    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    current = len(lay.read_host_maps())
    need = current + MAPS_PER_WINDOW * max_sandboxes + MAP_COUNT_SLACK
    if need > limit:
        raise OutOfSandboxes(
            f"{max_sandboxes} sandboxes need about {need} memory mappings but "
            f"vm.max_map_count is {limit}; run `sysctl -w vm.max_map_count={need}` as root"
        )


class NativeImage:
    """An image prepared for the native backend: shared code memfd, data template."""

    def __init__(self, plan: ImagePlan) -> None:
        self.plan = plan
        self.layout = plan.layout()
        code = bytearray(plan.code)
        code += bytes(lay.page_up(len(code)) - len(code))
        page = ffi.from_buffer("uint8_t[]", code)
        lib.tmebox_write_rt_page(page)
        self.code_size = len(code)
        fd = os.memfd_create(f"tmebox-code:{os.path.basename(plan.name)}",
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(code)
            while view:
                view = view[os.write(fd, view):]
            # Sealed: nothing, not even a runtime bug, can change code mapped into windows.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.data = plan.data
        rel = [off - plan.data_start for off in plan.relocs]
        self.relocs = ffi.new("uint32_t[]", rel) if rel else ffi.NULL
        self.n_relocs = len(rel)
        # Windows of destroyed sandboxes that still map this image's code and an
        # emptied RW area: spawning into one skips both mmaps and the code page faults.
        self.warm: list[int] = []

    def close(self) -> None:
        for window in self.warm:
            POOL.release(window)
        self.warm.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NativeMemory(SandboxMemory):
    def __init__(self, base: int, layout: lay.WindowLayout) -> None:
        super().__init__(layout.code_lo, layout.rw_lo, layout.rw_hi)
        self.base = base

    def _read(self, off: int, n: int) -> bytes:
        return ffi.buffer(ffi.cast("char *", self.base + off), n)[:]

    def _write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        ffi.memmove(ffi.cast("char *", self.base + off), data, len(data))

    def _release(self, off: int, n: int) -> None:
        lo, hi = lay.page_up(off), (off + n) & ~(lay.PAGE - 1)
        if lo >= hi:
            self._write(off, bytes(n))
            return
        if lo > off:
            self._write(off, bytes(lo - off))
        if off + n > hi:
            self._write(hi, bytes(off + n - hi))
        lib.madvise(ffi.cast("void *", self.base + lo), hi - lo, MADV_DONTNEED)


class NativeEngine:
    """One sandbox on the CPU: window k, its mappings, its register context."""

    def __init__(self, image: NativeImage, window: int, warm: bool = False) -> None:
        self.image = image
        self.window = window
        self.base = base = lay.window_base(window)
        L = image.layout
        self.layout = L
        self.bundle = 1 if image.plan.isolation == "code+data" else 0
        if not warm:
            _mmap(base + L.code_lo, image.code_size, PROT_READ | PROT_EXEC,
                  MAP_SHARED | MAP_FIXED, image.fd)
            _mmap(base + L.rw_lo, L.rw_hi - L.rw_lo, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        data_at = ffi.cast("uint8_t *", base + L.data)
        ffi.memmove(data_at, image.data, len(image.data))
        if image.n_relocs:
            lib.tmebox_relocate(data_at, image.relocs, image.n_relocs, base + L.code_lo)
        self.memory = NativeMemory(base, L)
        ctx = lib.tmebox_ctx_new(base)
        if ctx == ffi.NULL:
            raise MemoryError("cannot allocate a sandbox context")
        self.ctx = ctx

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

    def invoker(self) -> Callable[..., int]:
        return functools.partial(lib.tmebox_invoke, self.ctx)

    def raw_invoker(self) -> tuple[Callable[..., int], Any]:
        """invoker() without the partial: (tmebox_invoke, ctx), one call layer less."""
        return lib.tmebox_invoke, self.ctx

    def last_stop(self) -> int:
        return self.ctx.reason

    def resume(self, result: int) -> int:
        return lib.tmebox_resume(self.ctx, result, self.bundle, self.layout.rw_lo,
                                 self.layout.rw_hi)

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

    def set_deadline(self, seconds: float | None) -> None:
        self.ctx.deadline_ns = (0 if seconds is None
                                else lib.tmebox_monotonic_ns() + max(1, int(seconds * 1e9)))

    def save(self) -> bytes:
        return ffi.buffer(self.ctx, CTX_SIZE)[:]

    def restore(self, snapshot: object) -> None:
        assert isinstance(snapshot, bytes)
        ffi.memmove(self.ctx, snapshot, len(snapshot))

    def destroy(self) -> None:
        if self.ctx is None:
            return
        lib.tmebox_ctx_free(self.ctx)
        self.ctx = None
        image, L = self.image, self.layout
        # Zap every page the tenant touched: the next tenant finds the same zero-filled
        # RW area a fresh mapping gives (mprotect never changed it).
        if (image.fd >= 0 and len(image.warm) < WARM_WINDOWS
                and lib.madvise(ffi.cast("void *", self.base + L.rw_lo), L.rw_hi - L.rw_lo,
                                MADV_DONTNEED) == 0):
            image.warm.append(self.window)
            return
        POOL.release(self.window)


class NativeBackend:
    name = "native"

    def __init__(self, max_sandboxes: int) -> None:
        # Handlers installed since the module was imported (faulthandler.enable(), ...)
        # would take sandbox faults for the host's: chain to them instead.
        status = lib.tmebox_init()
        if status != 0:
            raise TmeboxError(f"cannot install the sandbox signal handlers: "
                              f"{os.strerror(-status)}")
        check_map_count(max_sandboxes)
        self.max_sandboxes = max_sandboxes
        POOL.ensure(min(max_sandboxes, RESERVE_CHUNK), max_sandboxes)

    def prepare(self, plan: ImagePlan) -> NativeImage:
        return NativeImage(plan)

    def new_engine(self, image: NativeImage) -> NativeEngine:
        if image.warm:
            window, warm = image.warm.pop(), True
        else:
            POOL.ensure(1, self.max_sandboxes)
            window, warm = POOL.acquire(), False
        try:
            return NativeEngine(image, window, warm)
        except BaseException:
            POOL.release(window)
            raise

    def release_image(self, image: NativeImage) -> None:
        image.close()

    def close(self) -> None:
        """Nothing process-wide to undo: windows stay reserved for later Runtimes."""
