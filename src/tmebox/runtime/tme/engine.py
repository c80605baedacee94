"""One sandbox on the tme backend: its image, its memory (through its KeyID) and its
engine (the backend.Engine protocol)."""

from __future__ import annotations

import signal
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from unicorn import x86_const as x86

from tmebox.errors import TmeboxError
from tmebox.runtime.backend import (
    STOP_BADSTACK,
    STOP_RETURN,
    STOPPED,
    FastCallSpec,
    FaultInfo,
)
from tmebox.runtime.layout import WindowLayout, page_up
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory, SandboxMemoryError
from tmebox.runtime.snapshot import Run
from tmebox.runtime.tme.machine import MASK64
from tmebox.tme import LINE_SIZE
from tmebox.trusted import abi
from tmebox.trusted.image import Isolation
from tmebox.trusted.signature import Signature

if TYPE_CHECKING:
    from tmebox.runtime.backend import Engine, FastCall, Invoke, SandboxLock, SharedPool
    from tmebox.runtime.tme.backend import TmeBackend

_GPRS = tuple(getattr(x86, f"UC_X86_REG_{r}") for r in (
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12",
    "R13", "R15", "RIP"))


class TmeImage:
    """An image prepared for the tme backend: code with the runtime page, data template."""

    def __init__(self, plan: ImagePlan) -> None:
        self.plan = plan
        self.layout = plan.layout()
        code = bytearray(plan.code)
        # The runtime page: every slot traps (int3); the emulator recognises the two entries.
        code[:abi.RT_PAGE_SIZE] = b"\xcc" * abi.RT_PAGE_SIZE
        code += b"\xcc" * (page_up(len(code)) - len(code))
        self.code = bytes(code)
        data = bytearray(plan.data)
        data += bytes(-len(data) % LINE_SIZE)
        self.data = bytes(data)
        self.relocs = tuple(off - plan.data_start for off in plan.relocs)
        self.region_image = page_up(plan.image_end)


class TmeMemory(SandboxMemory):
    """Host access to window k: the whole pool seen through KeyID k (own code read-only)."""

    def __init__(self, engine: TmeEngine) -> None:
        L = engine.layout
        super().__init__(abi.GUARD_SIZE, abi.GUARD_SIZE, engine.backend.pool_size)
        # A proxy: engine -> memory -> engine would be a cycle keeping the pool alive.
        self.engine = weakref.proxy(engine)
        self.code_lo, self.code_hi = L.code_lo, L.code_hi

    def check(self, addr: int, n: int, write: bool) -> int:
        off = addr & OFFSET_MASK
        if not self.engine.alive:
            raise SandboxMemoryError(f"host access at window offset {off:#x}: sandbox "
                                     f"{self.engine.keyid} was destroyed (its key is cleared)")
        if not self.ok(addr, n, write):
            what = "write" if write else "read"
            raise SandboxMemoryError(
                f"host {what} of {n} bytes at window offset {off:#x} is outside window "
                f"{self.engine.keyid}'s {'writable' if write else 'readable'} pool "
                f"[{self.read_lo:#x}, {self.hi:#x})"
                + (f" or inside its code [{self.code_lo:#x}, {self.code_hi:#x})" if write
                   else "") + self.engine.backend._unreadable_note(self.engine, off, n))
        return off

    def ok(self, addr: int, n: int, write: bool) -> bool:
        off = addr & OFFSET_MASK
        if n < 0 or off < self.read_lo or off + n > self.hi or not self.engine.alive:
            return False
        if write and off < self.code_hi and off + n > self.code_lo:
            return False
        be = self.engine.backend
        return not be.platform.integrity or not be._unreadable(self.engine, off, n)

    def _read(self, off: int, n: int) -> bytes:
        return self.engine.backend._host_access(self.engine, off, n, None)

    def _write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        self.engine.backend._host_access(self.engine, off, len(data), bytes(data))

    def _release(self, off: int, n: int) -> None:
        self.engine.backend._release(self.engine, off, n)


class TmeEngine:
    """One sandbox on the shared emulator: KeyID k, window k, a region of the pool."""

    def __init__(self, backend: TmeBackend, image: TmeImage, keyid: int, region: int,
                 size: int) -> None:
        self.backend = backend
        self.image = image
        self.keyid = keyid
        self.base = keyid << abi.WINDOW_SHIFT
        self.region = (region, region + size)
        self.bundle = image.plan.isolation == Isolation.CODE_DATA
        delta = region - abi.IMAGE_WINDOW_OFFSET
        L = image.layout
        self.layout = WindowLayout(
            code_lo=L.code_lo + delta, code_hi=L.code_hi + delta, rw_lo=L.rw_lo + delta,
            rw_hi=region + size, stack_bottom=L.stack_bottom + delta,
            stack_top=L.stack_top + delta, data=L.data + delta, heap=L.heap + delta,
            mmap_top=region + size)
        self.buffers: dict[int, int] = {}  # host buffer pool offset -> size
        self.memory = TmeMemory(self)
        self.ctx = None  # UcContext while another engine holds the CPU
        self._fault = FaultInfo(0, 0, 0, 0)
        self.deadline_ns = 0
        self.interrupt_requested = False  # then every run stops at its start
        self.alive = True
        self._last_stop = 0

    # -- the Engine protocol ---------------------------------------------------------------

    def enter(self, rip: int, rsp: int, args: tuple[int, ...], return_to: int | None) -> int:
        be = self.backend
        with be.lock:
            be._take_cpu(self, fresh=True)
            if return_to is not None:
                rsp -= 8
                be._push_word(self, rsp, return_to)
            vals = [v & MASK64 for v in args]
            vals += [0] * (6 - len(vals))
            be.entry_regs.write([*vals, rsp, self.base, self.base])
            return be._run(self, rip)

    def invoker(self) -> tuple[Invoke, object]:
        """Sandbox.call's fast path: f(None, rip, rsp, return_to, a0..a5) -> signed rax or
        STOPPED."""

        def invoke(_: object, rip: int, rsp: int, return_to: int, *args: int) -> int:
            stop = self._last_stop = self.enter(rip, rsp, args, return_to)
            if stop != STOP_RETURN:
                return STOPPED
            v = self.result()
            return v - (1 << 64) if v >> 63 else v

        return invoke, None

    def new_lock(self) -> SandboxLock:
        return threading.RLock()

    def fast_call(self, spec: FastCallSpec) -> FastCall | None:
        return None  # the emulator costs far more than Python's call path

    def fast_export(self, rip: int, sig: Signature | None) -> object | None:
        return None

    def call_c_host(self, address: int, args: Sequence[object]) -> int:
        raise TmeboxError("a host function written in C (CHostFunction) needs the native "
                          "backend: the tme backend's memory is not the host's")

    def last_stop(self) -> int:
        return self._last_stop

    def resume(self, result: int) -> int:
        be = self.backend
        with be.lock:
            be._take_cpu(self)
            be.rax.set(result & MASK64)
            rsp = be.rsp.get()
            off = rsp & OFFSET_MASK
            if rsp >> abi.WINDOW_SHIFT != self.keyid or not (
                    self.layout.rw_lo <= off and off + 8 <= self.layout.rw_hi):
                self._fault = FaultInfo(signal.SIGSEGV, off, 0, off)
                return STOP_BADSTACK
            ret = self.memory.read_u64(rsp) & OFFSET_MASK
            be.rsp.set(rsp + 8)
            if self.bundle:
                ret &= ~(abi.BUNDLE_SIZE - 1)
            be.rcx.set(0)
            be.r11.set(self.base + ret)
            return be._run(self, self.base + ret)

    def result(self) -> int:
        with self.backend.lock:
            self.backend._take_cpu(self)
            return self.backend.rax.get()

    def syscall(self) -> tuple[int, tuple[int, int, int, int, int, int]]:
        with self.backend.lock:
            self.backend._take_cpu(self)
            v = self.backend.syscall_regs.read()
            return v[0], tuple(v[1:])  # type: ignore[return-value]

    def stack_pointer(self) -> int:
        with self.backend.lock:
            self.backend._take_cpu(self)
            return self.backend.rsp.get()

    def fault(self) -> FaultInfo:
        return self._fault

    def deadline(self) -> int:
        return self.deadline_ns

    def set_deadline(self, seconds: float | None) -> None:
        self.deadline_ns = 0 if seconds is None else (
            time.monotonic_ns() + max(1, int(seconds * 1e9)))
        if seconds is not None:
            self.backend._start_watchdog()

    def interrupt(self) -> None:
        self.interrupt_requested = True
        self.backend._stop_if_running(self)

    def interrupted(self) -> bool:
        return self.interrupt_requested

    def save(self) -> object:
        with self.backend.lock:
            self.backend._take_cpu(self)
            return self.backend.uc.context_save()

    def rebase(self, saved: object, lo: int, hi: int, delta: int) -> object:
        with self.backend.lock:
            be = self.backend
            be._take_cpu(self, snapshot=saved)
            for reg in _GPRS:
                v = be.uc.reg_read(reg)
                if lo <= v < hi:
                    be.uc.reg_write(reg, (v + delta) & MASK64)
            be.uc.reg_write(x86.UC_X86_REG_GS_BASE, self.base)
            be.uc.reg_write(x86.UC_X86_REG_R14, self.base)
            return be.uc.context_save()

    def mark_fd(self, fd: int, host: int, readable: bool, writable: bool, seekable: bool,
                whole: bool) -> None:
        pass  # every runtime call of the emulator goes through Python

    def keep_runs(self, runs: Sequence[Run]) -> None:
        return None  # written into the pool through the new sandbox's key (load_runs)

    def load_runs(self, runs: Sequence[Run], kept: object, origin: int) -> None:
        for run in runs:
            self.memory.write_relocated(self.layout.code_lo + run.at, run.data, run.pointers,
                                        origin)

    def restore(self, snapshot: object) -> None:
        with self.backend.lock:
            self.backend._take_cpu(self, snapshot=snapshot)

    def destroy(self) -> None:
        if self.alive:
            self.alive = False
            self.backend._destroy(self)

    # -- the SharedPool protocol: Sandbox.alloc/free/transfer ------------------------------

    @property
    def pool(self) -> SharedPool:
        return self

    def alloc(self, n: int) -> int:
        return self.backend._alloc_buffer(self, n)

    def free(self, addr: int, n: int) -> None:
        self.backend._free_buffer(self, addr, n)

    def transfer(self, addr: int, n: int, to: Engine) -> int:
        if not isinstance(to, TmeEngine) or to.backend is not self.backend:
            raise TmeboxError("transfer: both sandboxes must run on one tme backend")
        return self.backend._transfer(self, addr, n, to)

