"""The emulated machine's constants (paging, segments, exceptions, the set-up code) and
fast register access to unicorn."""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable

from unicorn import (
    Uc,
    UcError,
)
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from tmebox.runtime.layout import PAGE
from tmebox.tme import LINE_SIZE

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

ARG_REGS = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RCX,
             x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)
SYSCALL_REGS = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX,
                 x86.UC_X86_REG_R10, x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)
RIP, RSP, RAX = x86.UC_X86_REG_RIP, x86.UC_X86_REG_RSP, x86.UC_X86_REG_RAX
MASK64 = (1 << 64) - 1


class RegBatch:
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
        self.vals[:] = values  # type: ignore[assignment]  # (ctypes' stubs: c_uint64 | int)
        if uclib.uc_reg_write_batch(self.handle, self.ids, self.ptrs, self.n):
            raise UcError(uclib.uc_errno(self.handle))

    def read(self) -> list[int]:
        if uclib.uc_reg_read_batch(self.handle, self.ids, self.ptrs, self.n):
            raise UcError(uclib.uc_errno(self.handle))
        return self.vals[:]


def weakly(method: Callable[..., object]) -> Callable[..., object]:
    """A callback for the Uc that does not keep the backend alive.

    The Uc keeps its callbacks; a bound method there would make a reference cycle, and the
    pool (hundreds of MiB) would live until the cycle collector ran, not until the Runtime
    is dropped.
    """
    ref = weakref.WeakMethod(method)

    def call(*args: object) -> object:
        m = ref()
        return None if m is None else m(*args)

    return call


class Reg:
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

