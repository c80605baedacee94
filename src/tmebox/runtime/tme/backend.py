"""The `tme` backend: sandboxes on the emulated TME-MK platform (docs/tme-backend.md).

One physical pool (the `tmebox.tme.Platform`'s memory) holds every sandbox's image,
stack, heap and host buffers as ciphertext. Sandbox k runs on KeyID k, and window k
(virtual `k << 32`) aliases the whole pool: window offset = pool offset. The CPU is
unicorn, one per backend, shared by all sandboxes; guest code runs at CPL 3 and every
fresh entry starts from one clean CPU context (`TmeBackend._enter_user_mode`).

Speed comes from never calling Python on an ordinary guest access. The emulated CPU
runs with x86 paging on; its page tables and every mapped page live in host arrays
(`_Mmu.arena`, the page-table chunks) mapped once as unicorn RAM. A page of window k is
filled on its first touch (the page fault reaches `TmeBackend._page_in`): it is decrypted
through KeyID k into a free frame, which becomes plain emulator RAM, and a copy of that
plaintext is kept as the frame's baseline. When the page leaves the emulator (another
KeyID touches the same pool page, the frame is needed, a transfer or a sync), the lines
that differ from the baseline are encrypted back through KeyID k. That is a write-back
cache holding plaintext, which is what the hardware's cache does; pages of different
windows stay resident side by side (they are at different virtual addresses) and a pool
page is resident in at most one window at a time, so the aliases stay coherent.
"""

from __future__ import annotations

import ctypes
import heapq
import signal
import struct
import threading
import time

import numpy as np
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_PROT,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import UcContext

from tmebox.errors import OutOfSandboxes, SandboxError, TmeboxError
from tmebox.runtime.backend import (
    MACHINE_CHECK,
    STOP_FAULT,
    STOP_RETURN,
    STOP_SYSCALL,
    STOP_TIMEOUT,
    FaultInfo,
)
from tmebox.runtime.layout import PAGE, page_up
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.memory import OFFSET_MASK
from tmebox.runtime.snapshot import Snapshot
from tmebox.runtime.tme.engine import TmeEngine, TmeImage
from tmebox.runtime.tme.machine import (
    ARG_REGS,
    CR0_NE,
    CR0_PG,
    CR0_WP,
    CR2_NONE,
    CR4_PAE,
    DEFAULT_HEAP_SIZE,
    DEFAULT_POOL_SIZE,
    DEFAULT_RESIDENT_PAGES,
    EFER_NXE,
    EFER_SCE,
    EXC_BP,
    EXC_DE,
    EXC_DF,
    EXC_GP,
    EXC_MF,
    EXC_PF,
    EXC_UD,
    GDT,
    LINES_PER_PAGE,
    LONG_RUN_NS,
    MASK64,
    MAX_RESIDENT_PAGES,
    MAX_WINDOW,
    MSR_EFER,
    PTE_NX,
    PTE_P,
    PTE_RW,
    PTE_US,
    RAX,
    RIP,
    RSP,
    SYSCALL_REGS,
    USER_CS,
    USER_INIT,
    USER_SS,
    WATCHDOG_PERIOD,
    Reg,
    RegBatch,
    weakly,
)
from tmebox.runtime.tme.mmu import Mmu
from tmebox.runtime.tme.pool import ExtentPool
from tmebox.tme import LINE_SIZE, PconfigStatus, Platform
from tmebox.trusted import abi
from tmebox.trusted.image import CpuLevel


class TmeBackend:
    """Sandboxes on one emulated TME-MK platform and one emulated CPU."""

    name = "tme"

    @staticmethod
    def cpu_level() -> CpuLevel:
        # unicorn's CPU runs SSE3..SSE4.2, POPCNT, CMPXCHG16B, and no VEX instruction.
        return CpuLevel.V2

    def __init__(self, max_sandboxes: int, keyid_bits: int = 15,
                 pool_size: int = DEFAULT_POOL_SIZE, algorithm: str = "aes-xts-128",
                 integrity: bool = False, heap_size: int = DEFAULT_HEAP_SIZE,
                 resident_pages: int = DEFAULT_RESIDENT_PAGES, cache: bool = True) -> None:
        for name, v in (("pool_size", pool_size), ("heap_size", heap_size)):
            if v <= 0 or v % PAGE:
                raise TmeboxError(f"{name} must be a positive multiple of {PAGE}, not {v}")
        if pool_size > abi.WINDOW_SIZE - abi.GUARD_SIZE:
            raise TmeboxError(f"pool_size {pool_size:#x} does not fit a 4 GiB window "
                              f"(at most {abi.WINDOW_SIZE - abi.GUARD_SIZE:#x})")
        if pool_size <= abi.GUARD_SIZE:
            raise TmeboxError(f"pool_size {pool_size:#x} leaves nothing above the "
                              f"{abi.GUARD_SIZE // 1024} KiB guard")
        if not 64 <= resident_pages <= MAX_RESIDENT_PAGES:
            raise TmeboxError(f"resident_pages must be 64..{MAX_RESIDENT_PAGES}, not "
                              f"{resident_pages}")
        self.platform = Platform(memory_size=pool_size, keyid_bits=keyid_bits,
                                 algorithm=algorithm, integrity=integrity, cache=cache)
        self.pool_size = pool_size
        self.heap_size = heap_size
        self.max_sandboxes = max_sandboxes
        self.max_keyid = min(self.platform.max_keyid, MAX_WINDOW)
        self.lock = threading.RLock()
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.mmu = Mmu(self.uc, self.platform, resident_pages)
        self._pool = ExtentPool(abi.GUARD_SIZE, pool_size)
        self._free_keyids = list(range(1, self.max_keyid + 1))  # a heap: lowest first
        self.engines: dict[int, TmeEngine] = {}
        self._cpu: TmeEngine | None = None  # whose registers the Uc holds
        self._running: TmeEngine | None = None
        self._stop: int | None = None
        self._watchdog_hit = False
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._setup_cpu()
        self.uc.hook_add(UC_HOOK_INTR, weakly(self._on_interrupt))
        for insn, hook in ((x86.UC_X86_INS_IN, self._on_port_io),
                           (x86.UC_X86_INS_OUT, self._on_port_io),
                           (x86.UC_X86_INS_SYSCALL, self._on_kernel_entry),
                           (x86.UC_X86_INS_SYSENTER, self._on_kernel_entry)):
            self.uc.hook_add(UC_HOOK_INSN, weakly(hook), None, 1, 0, insn)
        self.mmu.on_machine_check = weakly(self._machine_check)
        self.mmu.stopped = weakly(self._stopped)
        self.entry_regs = RegBatch(self.uc, (*ARG_REGS, RSP, x86.UC_X86_REG_R14,
                                              x86.UC_X86_REG_GS_BASE))
        self.syscall_regs = RegBatch(self.uc, (RAX, *SYSCALL_REGS))
        self.rax, self.rsp, self.rip = Reg(self.uc, RAX), Reg(self.uc, RSP), Reg(self.uc, RIP)
        self.cr2 = Reg(self.uc, x86.UC_X86_REG_CR2)
        # Set on every resume as the native helper leaves them (Engine.resume): what the host
        # ran in between never shows through the registers a syscall clobbers.
        self.rcx, self.r11 = Reg(self.uc, x86.UC_X86_REG_RCX), Reg(self.uc, x86.UC_X86_REG_R11)

    # -- the CPU ----------------------------------------------------------------------------

    def _setup_cpu(self) -> None:
        """Paging on (long mode, NX, write-protect; x87 errors as #MF, as Linux has it),
        SYSCALL enabled (so sysret at CPL 3 is the #GP it is natively); learn where QEMU
        keeps the 'previous exception' that turns a second page fault into a double fault;
        then drop to user mode: every guest entry starts from that CPL 3 state."""
        uc = self.uc
        uc.msr_write(MSR_EFER, uc.msr_read(MSR_EFER) | EFER_NXE | EFER_SCE)
        uc.reg_write(x86.UC_X86_REG_CR3, self.mmu.pml4 << 12)
        uc.reg_write(x86.UC_X86_REG_CR4, uc.reg_read(x86.UC_X86_REG_CR4) | CR4_PAE)
        uc.reg_write(x86.UC_X86_REG_CR0,
                     uc.reg_read(x86.UC_X86_REG_CR0) | CR0_PG | CR0_WP | CR0_NE)
        self._old_exception_at = self._find_old_exception()
        self._clean = self._enter_user_mode()
        self._scratch_ctx = uc.context_save()

    def _boot_run(self, pages: dict[int, tuple[bytes, int]], rip: int) -> tuple[int, UcContext]:
        """Run set-up code at rip in window 0 (KeyID 0 is the platform's, never a
        sandbox's) on the given pages (window offset -> bytes, PTE flags) until its first
        interrupt; returns that interrupt and the CPU context at it. The pages are gone
        afterwards and the CPU is back where it was."""
        uc, mmu = self.uc, self.mmu
        start = uc.context_save()
        w = mmu.new_window(0, 0, 0)
        frames = []
        for off, (blob, flags) in pages.items():
            frame = mmu.free_frames.pop()
            frames.append(frame)
            mmu.arena[frame, :len(blob)] = np.frombuffer(blob, np.uint8)
            table = mmu._pte_table(w, off, True)
            assert table is not None
            table[(off >> 12) & 511] = np.uint64(frame << 12 | flags)
        seen: list[tuple[int, UcContext]] = []

        def on_interrupt(uc: Uc, intno: int, _: object) -> None:
            seen.append((intno, uc.context_save()))
            uc.emu_stop()

        h = uc.hook_add(UC_HOOK_INTR, on_interrupt)
        try:
            uc.emu_start(rip, 0)
        finally:
            uc.hook_del(h)
            for frame in frames:
                mmu.arena[frame] = 0
                mmu.free_frames.append(frame)
            mmu.drop_window(0)
            mmu.tb_stale = True
            mmu.apply_stale()
            uc.context_restore(start)
        if not seen:
            raise TmeboxError("this unicorn build does not look like 2.1.x: set-up code in "
                              "the emulator ended without an interrupt")
        return seen[0]

    def _find_old_exception(self) -> int:
        """Offset in a saved context of the int QEMU sets to 14 on a page fault.

        Unicorn hands exceptions to UC_HOOK_INTR without delivering them, so QEMU never
        resets its record of the last exception; a second page fault in the same run
        would become a double fault. Found by one page fault (mov 0x3000, %al: page not
        present).
        """
        ctx = self.uc.context_save()
        _, at_fault = self._boot_run({0x1000: (b"\x8a\x04\x25\x00\x30\x00\x00\xcc", PTE_P)},
                                     0x1000)
        before = ctypes.string_at(ctx.context, ctx.size)
        after = ctypes.string_at(at_fault.context, at_fault.size)
        hits = [i for i in range(0, min(len(before), len(after)) - 3, 4)
                if struct.unpack_from("<i", before, i)[0] == -1
                and struct.unpack_from("<i", after, i)[0] == EXC_PF]
        if len(hits) != 1:
            raise TmeboxError(f"this unicorn build does not look like 2.1.x: found {len(hits)} "
                              "candidates for the exception state in a CPU context")
        return hits[0]

    def _enter_user_mode(self) -> UcContext:
        """The CPU state every guest entry starts from: CPL 3, 64-bit user code and data
        segments, all registers zero, RFLAGS 0x2, x87 and SSE as after a reset (`fninit`:
        control word 0x37f, all registers empty; MXCSR 0x1f80). Unicorn's own reset state
        has control word 0 (single precision, exceptions unmasked) and MXCSR 0.

        Writing CS/SS through unicorn changes only the selectors, not the CPL, so this goes
        the architectural way: a GDT with user segments (Linux's selectors, 0x33 and 0x2b),
        and an `iretq` from CPL 0 to `USER_INIT` in a user page. The GDT is dropped
        afterwards (GDTR limit 0): the loaded segments stay cached in the CPU, and any
        selector a guest tries to load is a #GP.
        """
        uc = self.uc
        gdt = b"".join(d.to_bytes(8, "little") for d in GDT)
        ring0 = bytes([0x6A, USER_SS, 0x6A, 0, 0x6A, 2, 0x6A, USER_CS, 0x68]) + (
            0x2000).to_bytes(4, "little") + b"\x48\xcf"  # push ss, rsp, rflags, cs, rip; iretq
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x3000, len(gdt) - 1, 0))
        uc.reg_write(RSP, 0x4000)  # the iretq frame goes below the GDT's page end
        try:
            intno, ctx = self._boot_run({0x1000: (ring0, PTE_P),
                                         0x2000: (USER_INIT, PTE_P | PTE_US),
                                         0x3000: (gdt, PTE_P | PTE_RW | PTE_NX)}, 0x1000)
        finally:
            uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0, 0, 0))
            uc.reg_write(RSP, 0)
        if intno != EXC_BP:
            raise TmeboxError(f"dropping the emulated CPU to user mode failed (exception "
                              f"{intno} instead of the int3 at CPL 3)")
        uc.context_restore(ctx)
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0, 0, 0))
        uc.reg_write(RIP, 0)
        uc.reg_write(x86.UC_X86_REG_CR2, CR2_NONE)
        if uc.reg_read(x86.UC_X86_REG_CS) != USER_CS or uc.reg_read(
                x86.UC_X86_REG_SS) != USER_SS:
            raise TmeboxError("dropping the emulated CPU to user mode failed (CS/SS are not "
                              "the user selectors)")
        return uc.context_save()

    def _reset_exception_state(self) -> None:
        """After a handled page fault: QEMU's last exception forgotten, CR2 'no address'
        (so a software `int $14` is not mistaken for a page fault at a stale address)."""
        uc, ctx = self.uc, self._scratch_ctx
        self.cr2.set(CR2_NONE)
        uc.context_update(ctx)
        saved = ctypes.cast(ctx.context, ctypes.c_void_p).value
        assert saved is not None  # a context_save()d context
        ctypes.memmove(saved + self._old_exception_at, b"\xff\xff\xff\xff", 4)
        uc.context_restore(ctx)

    def _take_cpu(self, engine: TmeEngine, fresh: bool = False, snapshot: object = None) -> None:
        """Load engine's registers into the Uc (saving whoever had it)."""
        uc = self.uc
        cur = self._cpu
        if cur is not engine and cur is not None and cur.alive:
            if cur.ctx is None:
                cur.ctx = uc.context_save()
            else:
                uc.context_update(cur.ctx)
        if fresh:
            uc.context_restore(self._clean)
        elif snapshot is not None:
            uc.context_restore(snapshot)
        elif cur is not engine:
            if engine.ctx is None:
                raise SandboxError(f"window {engine.keyid}: no saved CPU state to resume")
            uc.context_restore(engine.ctx)
        self._cpu = engine

    def _run(self, engine: TmeEngine, rip: int) -> int:
        """Run the guest from rip until it stops; returns a STOP_* code."""
        uc, mmu = self.uc, self.mmu
        while True:
            if engine.interrupt_requested or (engine.deadline_ns
                                              and time.monotonic_ns() >= engine.deadline_ns):
                engine._fault = FaultInfo(0, 0, rip & OFFSET_MASK,
                                          self.rsp.get() & OFFSET_MASK)
                return STOP_TIMEOUT
            mmu.apply_stale()
            self._stop = None
            self._running = engine
            t0 = time.perf_counter_ns()
            try:
                uc.emu_start(rip, 0)
                err = None
            except UcError as e:
                err = e
            finally:
                self._running = None
            if time.perf_counter_ns() - t0 > LONG_RUN_NS:
                # QEMU resizes its software TLB only when it is flushed, from how full it
                # was: after a long run, flush once so a big working set gets a big TLB
                # (pointer chasing over 4 MiB: ~7 -> ~13 M insn/s).
                mmu.tlb_stale = True
            if self._stop is not None:
                return self._stop
            rip = self.rip.get()
            if err is not None:
                return self._emu_error(engine, err, rip)
            if self._watchdog_hit:
                # The watchdog stopped us: the loop head reports a timeout, or carries on
                # if the stop was meant for a sandbox that ran before this one.
                self._watchdog_hit = False
                continue
            # Stopped with no reason of ours: a jump to address 0 (unicorn's `until`).
            return self._emu_error(engine, UcError(UC_ERR_INSN_INVALID), rip)

    def _emu_error(self, engine: TmeEngine, err: UcError, rip: int) -> int:
        code = err.errno
        if code == UC_ERR_INSN_INVALID:
            signo = signal.SIGILL
        elif code in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                      UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT):
            signo = signal.SIGSEGV
        else:
            signo = signal.SIGILL  # an exception unicorn could not handle
        engine._fault = FaultInfo(signo, rip & OFFSET_MASK, rip & OFFSET_MASK,
                                  self.rsp.get() & OFFSET_MASK)
        return STOP_FAULT

    def _on_interrupt(self, uc: Uc, intno: int, _: object) -> None:
        engine = self._running
        assert engine is not None
        if self._stop is not None:
            # The rest of a block after a machine check or an instruction hook's fault: that
            # first stop stands (no later int3 may turn it into a runtime call).
            uc.emu_stop()
            return
        rip = self.rip.get()
        if intno in (EXC_PF, EXC_DF):
            addr = self.cr2.get()
            if addr == CR2_NONE:  # `int $14` or `int $8`: a gate a user cannot use, a #GP
                self._fault_stop(engine, signal.SIGSEGV, rip, rip)
                return
            if self._page_in(engine, addr):
                self._reset_exception_state()
                return
            self._fault_stop(engine, signal.SIGSEGV, addr, rip)
            return
        if intno == EXC_BP:
            at = (rip - 1 - engine.base) - engine.layout.code_lo
            if at == abi.RT_SYSCALL_OFFSET:
                self._stop = STOP_SYSCALL
            elif at == abi.RT_EXIT_OFFSET:
                self._stop = STOP_RETURN
            else:
                self._fault_stop(engine, signal.SIGTRAP, rip - 1, rip - 1)
                return
            uc.emu_stop()
            return
        # Vectors 32-255 come only from `int n`: natively a #GP (the IDT has no user gate).
        signo = {EXC_DE: signal.SIGFPE, EXC_UD: signal.SIGILL, EXC_GP: signal.SIGSEGV,
                 EXC_MF: signal.SIGFPE}.get(intno, signal.SIGSEGV if intno >= 32 else
                                            signal.SIGILL)
        self._fault_stop(engine, signo, rip, rip)

    def _on_port_io(self, uc: Uc, *_: object) -> int:
        """in/out: at CPL 3 with IOPL 0 and no I/O bitmap a #GP, which unicorn skips."""
        self._insn_fault(signal.SIGSEGV)
        return 0

    def _on_kernel_entry(self, uc: Uc, _: object) -> None:
        """syscall/sysenter: unicorn makes them no-ops. There is no kernel behind them
        (sysenter is #UD in long mode on AMD, like this machine): an invalid opcode."""
        self._insn_fault(signal.SIGILL)

    def _insn_fault(self, signo: int) -> None:
        """Fault at the current instruction, from an instruction hook. The emulator stops at
        the end of the translated block (the block's other instructions still run: they
        are the guest's own, at CPL 3)."""
        engine = self._running
        if engine is not None and self._stop is None:
            rip = self.rip.get()
            self._fault_stop(engine, signo, rip, rip)

    def _stopped(self) -> bool:
        return self._stop is not None

    def _machine_check(self, keyid: int, pool_off: int) -> None:
        """A checked read hit a line that does not verify: stop the reader with a #MC.

        The emulator stops at the end of the current block; the loaded value is 0, and
        stores to checked pages are dropped from here on.
        """
        engine = self._running
        if engine is None or self._stop is not None:
            return
        self._fault_stop(engine, MACHINE_CHECK, engine.base + pool_off, self.rip.get())

    def _fault_stop(self, engine: TmeEngine, signo: int, addr: int, rip: int) -> None:
        engine._fault = FaultInfo(signo, addr & OFFSET_MASK, rip & OFFSET_MASK,
                                  self.rsp.get() & OFFSET_MASK)
        self._stop = STOP_FAULT
        self.uc.emu_stop()

    def _page_in(self, engine: TmeEngine, addr: int) -> bool:
        """Handle a page fault at full address addr: fill the page, or say it is a fault."""
        if addr >> abi.WINDOW_SHIFT != engine.keyid:
            return False
        page = addr & OFFSET_MASK & ~(PAGE - 1)
        if page < abi.GUARD_SIZE or page >= self.pool_size:
            return False
        mmu = self.mmu
        if mmu.resident(engine.keyid, page) is not None:
            return False  # present: a protection fault (write to code, fetch from data)
        mmu.fill(engine.keyid, page)
        mmu.apply_stale()
        return True

    # -- watchdog ---------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="tmebox-tme-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _stop_if_running(self, engine: TmeEngine) -> None:
        """Stop the emulator now if it runs engine (interrupt(), from any thread): the run
        loop's head then finds the request."""
        if self._running is engine:
            self._watchdog_hit = True
            self.uc.emu_stop()

    def _watch(self) -> None:
        while not self._closed.wait(WATCHDOG_PERIOD):
            eng = self._running
            if eng is not None and eng.deadline_ns and time.monotonic_ns() >= eng.deadline_ns:
                self._watchdog_hit = True
                self.uc.emu_stop()

    # -- sandboxes --------------------------------------------------------------------------

    def prepare(self, plan: ImagePlan) -> TmeImage:
        return TmeImage(plan)

    def release_image(self, image: TmeImage) -> None:
        """Images hold no emulator state: every sandbox has its own encrypted copy."""

    def new_engine(self, image: TmeImage, snapshot: Snapshot | None = None) -> TmeEngine:
        # (for a snapshot the emulator copies the image's data all the same: cheap enough)
        with self.lock:
            if len(self.engines) >= self.max_sandboxes:
                raise OutOfSandboxes(f"{len(self.engines)} sandboxes are alive "
                                     f"(max_sandboxes={self.max_sandboxes})")
            if not self._free_keyids:
                raise OutOfSandboxes(
                    f"all {self.max_keyid} KeyIDs of the TME platform are in use "
                    f"({self.platform.keyid_bits} KeyID bits; KeyID 0 is the platform's)")
            size = image.region_image + self.heap_size
            region = self._pool.take(size, PAGE, from_top=True)
            if region is None:
                raise OutOfSandboxes(
                    f"the TME pool is full: a sandbox of {image.plan.name} needs "
                    f"{size >> 10} KiB, the largest free extent is {self._pool.largest >> 10} "
                    f"KiB of {self.pool_size >> 20} MiB ({len(self.engines)} sandboxes alive; "
                    "raise pool_size or lower heap_size)")
            keyid = heapq.heappop(self._free_keyids)
            try:
                status = self.platform.pconfig(keyid, "set_key_random")
                if status != PconfigStatus.PROG_SUCCESS:
                    raise TmeboxError(f"PCONFIG SET_KEY_RANDOM for KeyID {keyid} failed: "
                                      f"{status.name}")
                engine = TmeEngine(self, image, keyid, region, size)
                self._install(engine)
            except BaseException:
                self._pool.give(region, region + size)
                heapq.heappush(self._free_keyids, keyid)
                raise
            self.engines[keyid] = engine
            return engine

    def _install(self, engine: TmeEngine) -> None:
        """Encrypt the image into the sandbox's region through its KeyID."""
        mmu, img, L = self.mmu, engine.image, engine.layout
        lo, hi = engine.region
        lines = slice(lo // LINE_SIZE, hi // LINE_SIZE)
        mmu.owner[lines] = engine.keyid
        mmu.fresh[lines] = True
        mmu.new_window(engine.keyid, L.code_lo, L.code_hi)
        self.platform.write_lines(L.code_lo, img.code, engine.keyid)
        mmu.fresh[L.code_lo // LINE_SIZE:(L.code_lo + len(img.code)) // LINE_SIZE] = False
        data = bytearray(img.data)
        load = engine.base + L.code_lo
        for off in img.relocs:
            addend = struct.unpack_from("<q", data, off)[0]
            struct.pack_into("<Q", data, off, (load + addend) & MASK64)
        if data:
            self.platform.write_lines(L.data, bytes(data), engine.keyid)
            mmu.fresh[L.data // LINE_SIZE:(L.data + len(data)) // LINE_SIZE] = False

    def _destroy(self, engine: TmeEngine) -> None:
        """Cryptographic erase: drop the plaintext, clear the key, free the lines."""
        with self.lock:
            k = engine.keyid
            if self._cpu is engine:
                self._cpu = None
            mmu = self.mmu
            mmu.drop_window(k)
            # Lines of this KeyID the platform's cache may hold (integrity-mode stores)
            # must leave it before the KeyID is reprogrammed (PCONFIG never flushes).
            self.platform.clflush_range(0, self.pool_size, k)
            status = self.platform.pconfig(k, "clear_key")
            assert status == PconfigStatus.PROG_SUCCESS
            lo, hi = engine.region
            mmu.owner[lo // LINE_SIZE:hi // LINE_SIZE] = 0
            self._pool.give(lo, hi)
            for off, n in engine.buffers.items():
                mmu.owner[off // LINE_SIZE:(off + n) // LINE_SIZE] = 0
                self._pool.give(off, off + n)
            engine.buffers.clear()
            del self.engines[k]
            heapq.heappush(self._free_keyids, k)

    # -- host access ------------------------------------------------------------------------

    def _host_access(self, engine: TmeEngine, off: int, n: int, data: bytes | None) -> bytes:
        """Read n bytes (data None) or write data at window offset off of engine's window."""
        with self.lock:
            if not engine.alive:
                raise SandboxError(f"window {engine.keyid}: the sandbox was destroyed; its "
                                   "memory is gone (its key is cleared)")
            mmu, k = self.mmu, engine.keyid
            out = bytearray() if data is None else None
            pos = 0
            while pos < n:
                page = (off + pos) & ~(PAGE - 1)
                lo = (off + pos) - page
                take = min(PAGE - lo, n - pos)
                frame = mmu.resident(k, page)
                if frame is None:
                    frame = mmu.fill(k, page)
                if data is None:
                    assert out is not None
                    out += mmu.arena[frame, lo:lo + take].tobytes()
                else:
                    mmu.arena[frame, lo:lo + take] = np.frombuffer(data, np.uint8, take, pos)
                    mmu.mark_dirty(k, page)
                pos += take
            return bytes(out) if out is not None else b""

    def _push_word(self, engine: TmeEngine, addr: int, value: int) -> None:
        """Write the 8-byte word at addr (a call's return address) in engine's window."""
        off = addr & OFFSET_MASK
        page = off & ~(PAGE - 1)
        mmu = self.mmu
        frame = mmu.resident(engine.keyid, page)
        if frame is None or off - page > PAGE - 8 or off < engine.layout.rw_lo:
            engine.memory.write_u64(addr, value)
            return
        mmu.arena[frame, off - page:off - page + 8] = np.frombuffer(
            (value & MASK64).to_bytes(8, "little"), np.uint8)
        mmu.mark_dirty(engine.keyid, page)

    def _unreadable(self, engine: TmeEngine, off: int, n: int) -> bool:
        """Integrity mode: whether [off, off+n) has a line KeyID k cannot verify."""
        if n <= 0:
            return False
        mmu, k = self.mmu, engine.keyid
        first, last = off // LINE_SIZE, (off + n - 1) // LINE_SIZE
        own = mmu.owner[first:last + 1] == k
        if not own.all():
            return True
        plat = self.platform
        for page in range(off & ~(PAGE - 1), off + n, PAGE):
            frame = mmu.resident(k, page)
            if frame is not None and mmu.bad.get(frame):
                return True
        return any(plat.is_poisoned(line * LINE_SIZE) for line in range(first, last + 1))

    def _unreadable_note(self, engine: TmeEngine, off: int, n: int) -> str:
        if self.platform.integrity and self._unreadable(engine, off, n):
            return (": it holds lines that do not verify under this KeyID (another "
                    "tenant's, free, or poisoned) - reading them is a machine check")
        return ""

    def _release(self, engine: TmeEngine, off: int, n: int) -> None:
        """Pages of [off, off+n) read as zero again (munmap, madvise, brk shrink)."""
        with self.lock:
            mmu, k = self.mmu, engine.keyid
            end = off + n
            full_lo, full_hi = page_up(off), end & ~(PAGE - 1)
            if off < full_lo:
                self._host_access(engine, off, min(full_lo, end) - off, bytes(min(full_lo, end)
                                                                              - off))
            if full_hi > full_lo:
                first, last = full_lo // LINE_SIZE, full_hi // LINE_SIZE
                own = mmu.owner[first:last] == k
                for page in range(full_lo, full_hi, PAGE):
                    frame = mmu.resident(k, page)
                    if frame is not None:
                        mmu.evict(frame, write_back=False)
                mmu.fresh[first:last] |= own
                if not own.all():  # not ours: zero it the slow way, through the key
                    for page in range(full_lo, full_hi, PAGE):
                        i = (page - full_lo) // LINE_SIZE
                        if not own[i:i + LINES_PER_PAGE].all():
                            self._host_access(engine, page, PAGE, bytes(PAGE))
            if end > full_hi >= full_lo:
                self._host_access(engine, full_hi, end - full_hi, bytes(end - full_hi))

    # -- host buffers and relocation ---------------------------------------------------------

    def _alloc_buffer(self, engine: TmeEngine, n: int) -> int:
        size = (n + LINE_SIZE - 1) & ~(LINE_SIZE - 1)
        with self.lock:
            at = self._pool.take(size, LINE_SIZE, from_top=False)
            if at is None:
                raise SandboxError(
                    f"the TME pool has no {size} free bytes for a buffer (largest free "
                    f"extent {self._pool.largest} bytes of {self.pool_size >> 20} MiB)")
            lines = slice(at // LINE_SIZE, (at + size) // LINE_SIZE)
            # Pages shared with other tenants' buffers may be resident in their windows;
            # the lines change hands, so take the pages out of the emulator first.
            self.mmu.flush_pages(at, at + size)
            self.mmu.owner[lines] = engine.keyid
            self.mmu.fresh[lines] = True
            engine.buffers[at] = size
            return engine.base + at

    def _free_buffer(self, engine: TmeEngine, addr: int, n: int) -> None:
        off = addr & OFFSET_MASK
        with self.lock:
            size = engine.buffers.get(off)
            if size is None or (n + LINE_SIZE - 1) & ~(LINE_SIZE - 1) != size:
                raise SandboxError(f"free({addr:#x}, {n}): not a buffer of this sandbox from "
                                   "alloc()")
            self.mmu.flush_pages(off, off + size)
            del engine.buffers[off]
            self.mmu.owner[off // LINE_SIZE:(off + size) // LINE_SIZE] = 0
            self._pool.give(off, off + size)

    def _transfer(self, src: TmeEngine, addr: int, n: int, dst: TmeEngine) -> int:
        """Hand [addr, addr+n) of src's buffers to dst by re-encrypting the lines in place."""
        if dst.backend is not self or not dst.alive:
            raise SandboxError("transfer: the receiving sandbox is not alive in this Runtime")
        off = addr & OFFSET_MASK
        if off % LINE_SIZE or n <= 0 or n % LINE_SIZE:
            raise SandboxError(f"transfer({addr:#x}, {n}): a transfer moves whole 64-byte "
                               "lines (line-aligned start, length a multiple of 64)")
        with self.lock:
            mmu = self.mmu
            span = None
            for start, size in src.buffers.items():
                if start <= off and off + n <= start + size:
                    span = (start, size)
            if span is None:
                raise SandboxError(f"transfer({addr:#x}, {n}): not inside a buffer this "
                                   "sandbox got from alloc()")
            first, last = off // LINE_SIZE, (off + n) // LINE_SIZE
            # Both aliases leave the emulator: src's plaintext is written back first.
            mmu.flush_pages(off, off + n)
            fresh = mmu.fresh[first:last].copy()
            i = 0
            while i < len(fresh):
                if fresh[i]:
                    i += 1
                    continue
                j = i
                while j < len(fresh) and not fresh[j]:
                    j += 1
                self.platform.rekey((first + i) * LINE_SIZE, (j - i) * LINE_SIZE, src.keyid,
                                    dst.keyid)
                i = j
            mmu.owner[first:last] = dst.keyid
            start, size = span
            del src.buffers[start]
            for lo, hi in ((start, off), (off + n, start + size)):
                if hi > lo:
                    src.buffers[lo] = hi - lo
            dst.buffers[off] = n
            return dst.base + off

    # -- inspection -------------------------------------------------------------------------

    def sync(self) -> None:
        """Write every changed line held by the emulator back to the pool (encrypted)."""
        with self.lock:
            self.mmu.sync()

    def close(self) -> None:
        self._closed.set()
        with self.lock:
            for engine in list(self.engines.values()):
                engine.destroy()

