"""The tme backend's MMU: plaintext frames, guest page tables and the write-back of pool
pages (docs/tme-backend.md, "Memory").

A page of window k is decrypted through KeyID k into a free frame on its first touch; the
lines that differ from the frame's baseline copy are encrypted back when the page leaves the
emulator. A pool page is resident in at most one window at a time, so the aliases stay
coherent.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from unicorn import (
    UC_PROT_ALL,
    Uc,
)
from unicorn import unicorn_const as ucc

from tmebox.runtime.layout import PAGE
from tmebox.runtime.tme.machine import (
    LINES_PER_PAGE,
    MMIO_BASE,
    MMIO_SLOTS,
    PT_CHUNK_FRAMES,
    PTE_ADDR,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_RW,
    PTE_TABLE,
    PTE_US,
    weakly,
)
from tmebox.tme import LINE_SIZE, MachineCheck, Platform


@dataclass
class Window:
    """The emulator-side state of one window: its page tables and resident pages."""

    keyid: int
    pd: dict[int, int] = field(default_factory=dict)  # GiB index -> page-directory frame
    pt: dict[int, int] = field(default_factory=dict)  # 2 MiB index -> page-table frame
    pages: dict[int, int] = field(default_factory=dict)  # pool page offset -> data frame
    code: tuple[int, int] = (0, 0)  # window offsets mapped executable
    has_code_frames: bool = False


class Mmu:
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
        self.windows: dict[int, Window] = {}
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
            uc.mmio_map(MMIO_BASE, MMIO_SLOTS * PAGE, weakly(self.check_read), None,
                        weakly(self.check_write), None)
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

    def _pte_table(self, w: Window, off: int, create: bool) -> np.ndarray | None:
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

    def new_window(self, keyid: int, code_lo: int, code_hi: int) -> Window:
        w = self.windows[keyid] = Window(keyid, code=(code_lo, code_hi))
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

    def _unmap(self, w: Window, page: int, frame: int) -> None:
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
            self.uc.ctl(ucc.UC_CTL_TB_FLUSH, ucc.UC_CTL_IO_WRITE)
            self.tb_stale = False

