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

import contextlib
import ctypes
import heapq
import signal
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

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
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import UcContext, uclib

from tmebox.errors import OutOfSandboxes, SandboxError, TmeboxError
from tmebox.runtime.backend import (
    MACHINE_CHECK,
    STOP_BADSTACK,
    STOP_FAULT,
    STOP_RETURN,
    STOP_SYSCALL,
    STOP_TIMEOUT,
    STOPPED,
    Engine,
    FaultInfo,
    Invoke,
    SharedPool,
)
from tmebox.runtime.layout import PAGE, WindowLayout, page_up
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory, SandboxMemoryError
from tmebox.tme import LINE_SIZE, MachineCheck, PconfigStatus, Platform
from tmebox.trusted import abi
from tmebox.trusted.image import Isolation

LINES_PER_PAGE = PAGE // LINE_SIZE
DEFAULT_POOL_SIZE = 512 << 20
DEFAULT_HEAP_SIZE = 4 << 20
DEFAULT_RESIDENT_PAGES = 16384  # 64 MiB of plaintext frames in the emulator
PT_CHUNK_FRAMES = 1024  # page-table frames are mapped 4 MiB at a time
MMIO_BASE = 1 << 38  # physical address of the integrity mode's checked pages
MAX_RESIDENT_PAGES = 1 << 24  # frames and page tables stay below MMIO_BASE
MMIO_SLOTS = 256
MAX_WINDOW = (1 << 15) - 1  # windows 1..32767 fill the 47-bit address space
WATCHDOG_PERIOD = 0.005
LONG_RUN_NS = 1_000_000

# Page-table entry bits.
PTE_P, PTE_RW, PTE_US, PTE_D = 1, 2, 4, 1 << 6
PTE_NX = 1 << 63
PTE_ADDR = 0x000F_FFFF_FFFF_F000
PTE_TABLE = PTE_P | PTE_RW | PTE_US  # upper levels: the leaf entry decides
CR0_PG, CR0_WP, CR0_NE, CR4_PAE = 1 << 31, 1 << 16, 1 << 5, 1 << 5
EFER_SCE, EFER_NXE = 1, 1 << 11
MSR_EFER = 0xC000_0080

# Guest code runs at CPL 3 in these segments (Linux's user selectors, so %cs and %ss read
# as they do natively); GDT entries: null, kernel code, kernel data, -, -, user data, user
# code (64-bit), as the set-up's iretq needs them. Flat, present, 4 GiB limit.
USER_SS, USER_CS = 0x2B, 0x33
GDT = (0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0, 0, 0x00CF_F300_0000_FFFF,
       0x00AF_FB00_0000_FFFF)
# What the set-up runs at CPL 3 (at window-0 offset 0x2000): fninit; ldmxcsr 3(%rip); int3;
# two bytes of padding; the MXCSR of a reset, 0x1f80.
USER_INIT = bytes.fromhex("dbe3" "0fae1503000000" "cc" "0000" "801f0000")

EXC_DE, EXC_BP, EXC_UD, EXC_DF, EXC_GP, EXC_PF, EXC_MF = 0, 3, 6, 8, 13, 14, 16
CR2_NONE = 1 << 63  # non-canonical: no page fault reports it (such an access is a #GP)

_ARG_REGS = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RCX,
             x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)
_SYSCALL_REGS = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX,
                 x86.UC_X86_REG_R10, x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)
_RIP, _RSP, _RAX = x86.UC_X86_REG_RIP, x86.UC_X86_REG_RSP, x86.UC_X86_REG_RAX
_MASK64 = (1 << 64) - 1


class _RegBatch:
    """A fixed list of registers read or written in one C call (the binding's per-register
    path costs ~2 us each, which dominated a sandbox call)."""

    def __init__(self, uc: Uc, regs: tuple[int, ...]) -> None:
        n = self.n = len(regs)
        self.handle = uc._uch
        self.ids = (ctypes.c_int * n)(*regs)
        self.vals = (ctypes.c_uint64 * n)()
        self.ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(self.vals) + 8 * i
                                            for i in range(n)))

    def write(self, values: list[int]) -> None:
        self.vals[:] = values
        if uclib.uc_reg_write_batch(self.handle, self.ids, self.ptrs, self.n):
            raise UcError(uclib.uc_errno(self.handle))

    def read(self) -> list[int]:
        if uclib.uc_reg_read_batch(self.handle, self.ids, self.ptrs, self.n):
            raise UcError(uclib.uc_errno(self.handle))
        return self.vals[:]


def _weakly(method: Callable[..., object]) -> Callable[..., object]:
    """A callback for the Uc that does not keep the backend alive.

    The Uc keeps its callbacks; a bound method there would make a reference cycle, and the
    pool (hundreds of MiB) would live until the cycle collector ran, not until the Runtime
    is dropped.
    """
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def call(*args: object) -> object:
        m = ref()
        return None if m is None else m(*args)

    return call


class _Reg:
    """One 64-bit register, read and written without the binding's per-call dispatch."""

    def __init__(self, uc: Uc, reg: int) -> None:
        self.handle = uc._uch
        self.reg = reg
        self.val = ctypes.c_uint64()
        self.ref = ctypes.byref(self.val)

    def get(self) -> int:
        uclib.uc_reg_read(self.handle, self.reg, self.ref)
        return self.val.value

    def set(self, value: int) -> None:
        self.val.value = value
        uclib.uc_reg_write(self.handle, self.reg, self.ref)


@dataclass
class _Window:
    """The emulator-side state of one window: its page tables and resident pages."""

    keyid: int
    pd: dict[int, int] = field(default_factory=dict)  # GiB index -> page-directory frame
    pt: dict[int, int] = field(default_factory=dict)  # 2 MiB index -> page-table frame
    pages: dict[int, int] = field(default_factory=dict)  # pool page offset -> data frame
    code: tuple[int, int] = (0, 0)  # window offsets mapped executable
    has_code_frames: bool = False


class _Mmu:
    """Plaintext frames, guest page tables and the pool-page directory of one Uc."""

    def __init__(self, uc: Uc, platform: Platform, resident_pages: int) -> None:
        self.uc = uc
        self.platform = platform
        self.nframes = resident_pages
        self.arena = np.zeros((resident_pages, PAGE), dtype=np.uint8)
        self.baseline = np.zeros((resident_pages, PAGE), dtype=np.uint8)
        uc.mem_map_ptr(0, resident_pages * PAGE, UC_PROT_ALL, self.arena.ctypes.data)
        self.free_frames = list(range(resident_pages - 1, -1, -1))
        self.frame_owner: dict[int, tuple[int, int]] = {}  # frame -> (keyid, page)
        self.fifo: OrderedDict[int, None] = OrderedDict()  # data frames, oldest first
        # Page-table frames: their own physical chunks, so data frames can all be evicted.
        self.pt_chunks: list[np.ndarray] = []
        self.pt_free: list[int] = []
        self.pml4 = self._pt_alloc()
        self.windows: dict[int, _Window] = {}
        self.directory: dict[int, tuple[int, int]] = {}  # pool page -> (keyid, frame)
        nlines = platform.memory_size // LINE_SIZE
        self.owner = np.zeros(nlines, dtype=np.uint16)  # 0: free or host
        self.fresh = np.zeros(nlines, dtype=bool)  # owner's view is zero; nothing written
        self.bad: dict[int, int] = {}  # integrity mode: frame -> mask of unreadable lines
        # Integrity mode: a page with unreadable lines is mapped through a checked slot
        # (unicorn MMIO), so every access to it comes to `check_read`/`check_write`.
        self.slot_frame: dict[int, int] = {}
        self.frame_slot: dict[int, int] = {}
        self.free_slots = list(range(MMIO_SLOTS - 1, -1, -1))
        self.on_machine_check: Callable[..., object] | None = None
        self.stopped: Callable[..., object] = lambda: False
        if platform.integrity:
            uc.mmio_map(MMIO_BASE, MMIO_SLOTS * PAGE, _weakly(self.check_read), None,
                        _weakly(self.check_write), None)
        self.tlb_stale = False
        self.tb_stale = False

    # -- page-table frames ------------------------------------------------------------------

    def _pt_alloc(self) -> int:
        if not self.pt_free:
            chunk = np.zeros((PT_CHUNK_FRAMES, PAGE // 8), dtype=np.uint64)
            first = self.nframes + len(self.pt_chunks) * PT_CHUNK_FRAMES
            self.uc.mem_map_ptr(first * PAGE, PT_CHUNK_FRAMES * PAGE, UC_PROT_ALL,
                                chunk.ctypes.data)
            self.pt_chunks.append(chunk)
            self.pt_free = list(range(first + PT_CHUNK_FRAMES - 1, first - 1, -1))
        return self.pt_free.pop()

    def _pt(self, frame: int) -> np.ndarray:
        i = frame - self.nframes
        return self.pt_chunks[i // PT_CHUNK_FRAMES][i % PT_CHUNK_FRAMES]

    def _pt_release(self, frame: int) -> None:
        self._pt(frame)[:] = 0
        self.pt_free.append(frame)

    def _pte_table(self, w: _Window, off: int, create: bool) -> np.ndarray | None:
        """The page table covering window offset off (created on demand)."""
        pt = w.pt.get(off >> 21)
        if pt is None:
            if not create:
                return None
            k = w.keyid
            pd = w.pd.get(off >> 30)
            if pd is None:
                pdpt_i = k >> 7
                pml4 = self._pt(self.pml4)
                if not int(pml4[pdpt_i]) & PTE_P:
                    pml4[pdpt_i] = self._pt_alloc() << 12 | PTE_TABLE
                pdpt = self._pt((int(pml4[pdpt_i]) & PTE_ADDR) >> 12)
                pd = w.pd[off >> 30] = self._pt_alloc()
                pdpt[(k & 127) << 2 | off >> 30] = pd << 12 | PTE_TABLE
            pt = w.pt[off >> 21] = self._pt_alloc()
            self._pt(pd)[(off >> 21) & 511] = pt << 12 | PTE_TABLE
        return self._pt(pt)

    def new_window(self, keyid: int, code_lo: int, code_hi: int) -> _Window:
        w = self.windows[keyid] = _Window(keyid, code=(code_lo, code_hi))
        return w

    def drop_window(self, keyid: int) -> None:
        """Forget window keyid entirely, resident plaintext included (no write-back)."""
        w = self.windows.pop(keyid)
        for page, frame in list(w.pages.items()):
            self._unmap(w, page, frame)
        for t in (*w.pt.values(), *w.pd.values()):
            self._pt_release(t)
        pml4 = self._pt(self.pml4)
        if int(pml4[keyid >> 7]) & PTE_P:
            pdpt = self._pt((int(pml4[keyid >> 7]) & PTE_ADDR) >> 12)
            pdpt[(keyid & 127) << 2:((keyid & 127) << 2) + 4] = 0
        self.tlb_stale = True
        if w.has_code_frames:
            self.tb_stale = True  # a later window k may put other code at these addresses

    # -- filling and writing back -----------------------------------------------------------

    def resident(self, keyid: int, page: int) -> int | None:
        hit = self.directory.get(page)
        return hit[1] if hit is not None and hit[0] == keyid else None

    def fill(self, keyid: int, page: int) -> int:
        """Make pool page `page` resident in window keyid; returns its frame."""
        hit = self.directory.get(page)
        if hit is not None:
            if hit[0] == keyid:
                return hit[1]
            self.evict(hit[1])  # another alias holds it: write back, then invalidate
        frame = self._take_frame()
        first = page // LINE_SIZE
        own = self.owner[first:first + LINES_PER_PAGE] == keyid
        zero = own & self.fresh[first:first + LINES_PER_PAGE]
        rows = self.arena[frame].reshape(LINES_PER_PAGE, LINE_SIZE)
        plat = self.platform
        if plat.integrity:
            zero = self._fill_checked(keyid, page, frame, own, zero)
        elif zero.all():
            rows[:] = 0
        else:
            plain = plat.read_lines(page, LINES_PER_PAGE, keyid)
            rows[:] = np.frombuffer(plain, dtype=np.uint8).reshape(LINES_PER_PAGE, LINE_SIZE)
        if zero.any():
            rows[zero] = 0
        self.baseline[frame] = self.arena[frame]
        w = self.windows[keyid]
        lo, hi = w.code
        table = self._pte_table(w, page, True)
        assert table is not None
        if lo <= page < hi:
            # Own code: read + execute (QEMU cannot execute from a checked page, so a
            # poisoned line of a code page is executed as zeros: it faults, it leaks nothing).
            table[(page >> 12) & 511] = frame << 12 | PTE_P | PTE_US
            w.has_code_frames = True
        elif frame in self.bad:
            slot = self._take_slot(frame)
            table[(page >> 12) & 511] = np.uint64(MMIO_BASE + slot * PAGE | PTE_P | PTE_RW
                                                  | PTE_US | PTE_NX)
        else:
            table[(page >> 12) & 511] = np.uint64(frame << 12 | PTE_P | PTE_RW | PTE_US
                                                  | PTE_NX)
        w.pages[page] = frame
        self.directory[page] = (keyid, frame)
        self.frame_owner[frame] = (keyid, page)
        self.fifo[frame] = None
        return frame

    def _fill_checked(self, keyid: int, page: int, frame: int, own: np.ndarray,
                      zero: np.ndarray) -> np.ndarray:
        """Integrity mode: decrypt only lines that can verify; the rest are marked bad.

        Reading a foreign (or poisoned) line through this KeyID would raise a machine
        check and poison the line: that must happen only if the program reads that line,
        not because a neighbour line in the same page was touched. Returns the lines that
        read as zero (fresh and not poisoned).
        """
        rows = self.arena[frame].reshape(LINES_PER_PAGE, LINE_SIZE)
        rows[:] = 0
        poisoned = self.platform.is_poisoned
        zero = zero.copy()
        ok = own & ~zero
        for i in np.flatnonzero(own):
            if poisoned(page + int(i) * LINE_SIZE):
                ok[i] = zero[i] = False
        idx = np.flatnonzero(ok)
        start = 0
        while start < len(idx):  # contiguous runs, one batch each
            end = start
            while end + 1 < len(idx) and idx[end + 1] == idx[end] + 1:
                end += 1
            a, n = int(idx[start]), int(idx[end]) - int(idx[start]) + 1
            try:
                plain = self.platform.read_lines(page + a * LINE_SIZE, n, keyid)
                rows[a:a + n] = np.frombuffer(plain, dtype=np.uint8).reshape(n, LINE_SIZE)
            except MachineCheck:
                for j in range(a, a + n):  # one at a time: only the bad ones stay bad
                    try:
                        line = self.platform.read_lines(page + j * LINE_SIZE, 1, keyid)
                        rows[j] = np.frombuffer(line, dtype=np.uint8)
                    except MachineCheck:
                        ok[j] = False
            start = end + 1
        bad = ~(ok | zero)
        if bad.any():
            self.bad[frame] = int(np.packbits(bad, bitorder="little").view("<u8")[0])
        return zero

    def _take_slot(self, frame: int) -> int:
        if not self.free_slots:
            self.evict(self.slot_frame[min(self.slot_frame)])
        slot = self.free_slots.pop()
        self.slot_frame[slot] = frame
        self.frame_slot[frame] = slot
        return slot

    def _checked(self, offset: int, size: int) -> tuple[int, int, int, bool]:
        """(frame, byte in page, pool offset, touches a bad line) of a checked access."""
        frame = self.slot_frame[offset // PAGE]
        at = offset % PAGE
        bad = self.bad[frame]
        lines = ((1 << ((at + size - 1) // LINE_SIZE + 1)) - 1) >> (at // LINE_SIZE)
        keyid, page = self.frame_owner[frame]
        return frame, at, page + at, bool(bad >> (at // LINE_SIZE) & lines)

    def check_read(self, uc: Uc, offset: int, size: int, _: object) -> int:
        frame, at, pool_off, bad = self._checked(offset, size)
        if bad:
            keyid = self.frame_owner[frame][0]
            with contextlib.suppress(MachineCheck):  # the read poisons the line, as on hardware
                self.platform.read(pool_off & ~(LINE_SIZE - 1), LINE_SIZE, keyid)
            if self.on_machine_check is not None:
                self.on_machine_check(keyid, pool_off)
            return 0
        return int.from_bytes(self.arena[frame, at:at + size].tobytes(), "little")

    def check_write(self, uc: Uc, offset: int, size: int, value: int, _: object) -> None:
        if self.stopped():
            return  # the rest of a block after a machine check: nothing more lands
        frame, at, pool_off, bad = self._checked(offset, size)
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if bad:
            # A store into a line this KeyID cannot verify: the platform's read-for-
            # ownership fails, the store is dropped and the line poisoned. No fault here.
            self.platform.write(pool_off, data, self.frame_owner[frame][0])
            return
        self.arena[frame, at:at + size] = np.frombuffer(data, np.uint8)

    def _take_frame(self) -> int:
        if not self.free_frames:
            oldest = next(iter(self.fifo))
            self.evict(oldest)
        return self.free_frames.pop()

    def write_back(self, frame: int) -> None:
        """Encrypt the lines of a resident page that changed since it was filled."""
        keyid, page = self.frame_owner[frame]
        w = self.windows[keyid]
        table = self._pte_table(w, page, False)
        if table is None or not int(table[(page >> 12) & 511]) & PTE_D:
            return
        now = self.arena[frame].reshape(LINES_PER_PAGE, LINE_SIZE)
        was = self.baseline[frame].reshape(LINES_PER_PAGE, LINE_SIZE)
        changed = np.flatnonzero((now != was).any(axis=1))
        if not len(changed):
            return
        first = page // LINE_SIZE
        bad = self.bad.get(frame, 0)
        plat = self.platform
        i = 0
        while i < len(changed):
            a = int(changed[i])
            if bad >> a & 1:
                # A line this KeyID cannot read: a store to it needs the old line (a partial
                # write), whose fill fails, so the platform drops it and poisons the line.
                diff = np.flatnonzero(now[a] != was[a])
                lo, hi = int(diff[0]), int(diff[-1]) + 1
                plat.write(page + a * LINE_SIZE + lo, now[a, lo:hi].tobytes(), keyid)
                self.fresh[first + a] = False
                i += 1
                continue
            j = i
            while (j + 1 < len(changed) and changed[j + 1] == changed[j] + 1
                   and not bad >> int(changed[j + 1]) & 1):
                j += 1
            b = int(changed[j]) + 1
            plat.write_lines(page + a * LINE_SIZE, now[a:b].tobytes(), keyid)
            self.fresh[first + a:first + b] = False
            i = j + 1
        was[:] = now

    def evict(self, frame: int, write_back: bool = True) -> None:
        keyid, page = self.frame_owner[frame]
        if write_back:
            self.write_back(frame)
        self._unmap(self.windows[keyid], page, frame)

    def _unmap(self, w: _Window, page: int, frame: int) -> None:
        table = self._pte_table(w, page, False)
        if table is not None:
            table[(page >> 12) & 511] = 0
        del w.pages[page]
        del self.directory[page]
        del self.frame_owner[frame]
        self.fifo.pop(frame, None)
        self.bad.pop(frame, None)
        slot = self.frame_slot.pop(frame, None)
        if slot is not None:
            del self.slot_frame[slot]
            self.free_slots.append(slot)
        self.free_frames.append(frame)
        self.tlb_stale = True
        if w.code[0] <= page < w.code[1]:
            self.tb_stale = True

    def mark_dirty(self, keyid: int, page: int) -> None:
        table = self._pte_table(self.windows[keyid], page, False)
        if table is not None:
            table[(page >> 12) & 511] |= np.uint64(PTE_D)

    def sync(self) -> None:
        for frame in list(self.frame_owner):
            self.write_back(frame)

    def flush_pages(self, lo: int, hi: int, write_back: bool = True) -> None:
        """Take every pool page overlapping [lo, hi) out of the emulator, in all windows."""
        for page in range(lo & ~(PAGE - 1), hi, PAGE):
            hit = self.directory.get(page)
            if hit is not None:
                self.evict(hit[1], write_back)

    def apply_stale(self) -> None:
        """Invalidate what the emulator may cache about unmapped pages (before it runs)."""
        if self.tlb_stale:
            self.uc.ctl(ucc.UC_CTL_TLB_FLUSH, ucc.UC_CTL_IO_WRITE)
            self.tlb_stale = False
        if self.tb_stale:
            self.uc.ctl_flush_tb()
            self.tb_stale = False


class _Pool:
    """Free space of the physical pool: regions from the top, host buffers from the bottom."""

    def __init__(self, lo: int, hi: int) -> None:
        self.free: list[tuple[int, int]] = [(lo, hi)]

    def take(self, n: int, align: int, from_top: bool) -> int | None:
        spans = reversed(self.free) if from_top else self.free
        for s, e in spans:
            if from_top:
                at = (e - n) & ~(align - 1)
                if at >= s:
                    break
            else:
                at = (s + align - 1) & ~(align - 1)
                if at + n <= e:
                    break
        else:
            return None
        self._remove(at, at + n)
        return at

    def _remove(self, lo: int, hi: int) -> None:
        out = []
        for s, e in self.free:
            if e <= lo or s >= hi:
                out.append((s, e))
                continue
            if s < lo:
                out.append((s, lo))
            if e > hi:
                out.append((hi, e))
        self.free = out

    def give(self, lo: int, hi: int) -> None:
        spans = sorted([*self.free, (lo, hi)])
        merged: list[tuple[int, int]] = []
        for s, e in spans:
            if merged and merged[-1][1] >= s:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        self.free = merged

    @property
    def largest(self) -> int:
        return max((e - s for s, e in self.free), default=0)


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
            vals = [v & _MASK64 for v in args]
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

    def last_stop(self) -> int:
        return self._last_stop

    def resume(self, result: int) -> int:
        be = self.backend
        with be.lock:
            be._take_cpu(self)
            be.rax.set(result & _MASK64)
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

    def set_deadline(self, seconds: float | None) -> None:
        self.deadline_ns = 0 if seconds is None else (
            time.monotonic_ns() + max(1, int(seconds * 1e9)))
        if seconds is not None:
            self.backend._start_watchdog()

    def save(self) -> object:
        with self.backend.lock:
            self.backend._take_cpu(self)
            return self.backend.uc.context_save()

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


class TmeBackend:
    """Sandboxes on one emulated TME-MK platform and one emulated CPU."""

    name = "tme"

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
        self.mmu = _Mmu(self.uc, self.platform, resident_pages)
        self._pool = _Pool(abi.GUARD_SIZE, pool_size)
        self._free_keyids = list(range(1, self.max_keyid + 1))  # a heap: lowest first
        self.engines: dict[int, TmeEngine] = {}
        self._cpu: TmeEngine | None = None  # whose registers the Uc holds
        self._running: TmeEngine | None = None
        self._stop: int | None = None
        self._watchdog_hit = False
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._setup_cpu()
        self.uc.hook_add(UC_HOOK_INTR, _weakly(self._on_interrupt))
        for insn, hook in ((x86.UC_X86_INS_IN, self._on_port_io),
                           (x86.UC_X86_INS_OUT, self._on_port_io),
                           (x86.UC_X86_INS_SYSCALL, self._on_kernel_entry),
                           (x86.UC_X86_INS_SYSENTER, self._on_kernel_entry)):
            self.uc.hook_add(UC_HOOK_INSN, _weakly(hook), None, 1, 0, insn)
        self.mmu.on_machine_check = _weakly(self._machine_check)
        self.mmu.stopped = _weakly(self._stopped)
        self.entry_regs = _RegBatch(self.uc, (*_ARG_REGS, _RSP, x86.UC_X86_REG_R14,
                                              x86.UC_X86_REG_GS_BASE))
        self.syscall_regs = _RegBatch(self.uc, (_RAX, *_SYSCALL_REGS))
        self.rax, self.rsp, self.rip = _Reg(self.uc, _RAX), _Reg(self.uc, _RSP), _Reg(self.uc, _RIP)
        self.cr2 = _Reg(self.uc, x86.UC_X86_REG_CR2)

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
        uc.reg_write(_RSP, 0x4000)  # the iretq frame goes below the GDT's page end
        try:
            intno, ctx = self._boot_run({0x1000: (ring0, PTE_P),
                                         0x2000: (USER_INIT, PTE_P | PTE_US),
                                         0x3000: (gdt, PTE_P | PTE_RW | PTE_NX)}, 0x1000)
        finally:
            uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0, 0, 0))
            uc.reg_write(_RSP, 0)
        if intno != EXC_BP:
            raise TmeboxError(f"dropping the emulated CPU to user mode failed (exception "
                              f"{intno} instead of the int3 at CPL 3)")
        uc.context_restore(ctx)
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0, 0, 0))
        uc.reg_write(_RIP, 0)
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
        ctypes.memmove(ctypes.cast(ctx.context, ctypes.c_void_p).value
                       + self._old_exception_at, b"\xff\xff\xff\xff", 4)
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
            if engine.deadline_ns and time.monotonic_ns() >= engine.deadline_ns:
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

    def new_engine(self, image: TmeImage) -> TmeEngine:
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
            struct.pack_into("<Q", data, off, (load + addend) & _MASK64)
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
            (value & _MASK64).to_bytes(8, "little"), np.uint8)
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

