"""Runtime calls: the Linux system-call subset a sandbox may use, for every backend.

`handle()` gets the number and six arguments of a rewritten `syscall` and
returns the result (negative errno on failure) or an action (`Exit`, `Park`).
It touches nothing of the host but the three standard streams given to
spawn(): there is no open(), so no file, socket or process is reachable.
Sandbox pointers are used by their low 32 bits and bounds-checked (-EFAULT).
"""

from __future__ import annotations

import bisect
import errno
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any

from tmebox.runtime.layout import PAGE, WindowLayout, page_up
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory
from tmebox.toolchain import abi

# x86-64 system call numbers
SYS_READ, SYS_WRITE, SYS_CLOSE = 0, 1, 3
SYS_LSEEK, SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_BRK = 8, 9, 10, 11, 12
SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_IOCTL = 13, 14, 16
SYS_READV, SYS_WRITEV, SYS_SCHED_YIELD, SYS_MADVISE = 19, 20, 24, 28
SYS_GETPID, SYS_EXIT, SYS_KILL, SYS_GETTIMEOFDAY = 39, 60, 62, 96
SYS_SIGALTSTACK, SYS_ARCH_PRCTL, SYS_GETTID, SYS_TKILL, SYS_FUTEX = 131, 158, 186, 200, 202
SYS_SET_TID_ADDRESS, SYS_CLOCK_GETTIME, SYS_CLOCK_GETRES, SYS_EXIT_GROUP = 218, 228, 229, 231
SYS_TGKILL, SYS_GETRANDOM = 234, 318

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED = 4
ARCH_SET_FS, ARCH_GET_FS = 0x1002, 0x1003
TIOCGWINSZ = 0x5413
IOV_MAX = 1024
# One runtime call moves at most this much (a short count, as Linux may return), so a
# tenant cannot make the host allocate gigabytes at once.
IO_CHUNK = 1 << 20
SANDBOX_PID = 1  # the only process and thread a sandbox can name

# Clocks a sandbox may read; the CPU-time clocks read this thread's time.
_CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 4: time.CLOCK_MONOTONIC_RAW,
           5: time.CLOCK_REALTIME, 6: time.CLOCK_MONOTONIC, 7: time.CLOCK_BOOTTIME}
_CPU_CLOCKS = (2, 3)


@dataclass(frozen=True)
class Exit:
    """The sandbox ended: exit_group(status), or it signalled itself (abort)."""

    status: int
    signal: int | None = None


@dataclass(frozen=True)
class Park:
    """The crt finished initialising libc and waits for run() (abi.SYS_TMEBOX_PARK)."""


class Sink:
    """Where a sandbox's fd 1 or 2 goes: None (the host fd), a bytearray, or .write()."""

    def __init__(self, target: Any, host_fd: int) -> None:
        self.target = target
        self.host_fd = host_fd
        if target is None or isinstance(target, bytearray):
            self._write_obj = None
        else:
            # Text streams (sys.stdout) take bytes through their binary buffer.
            self._write_obj = getattr(target, "buffer", target)

    def write(self, data: bytes) -> int:
        if self.target is None:
            view = memoryview(data)
            while view:
                n = os.write(self.host_fd, view)
                view = view[n:]
        elif isinstance(self.target, bytearray):
            self.target += data
        else:
            try:
                self._write_obj.write(data)
            except TypeError:
                self._write_obj.write(data.decode("utf-8", "replace"))
        return len(data)


class Source:
    """Where fd 0 reads from: bytes, a file object with .read(), or None (the host's fd 0)."""

    def __init__(self, source: Any) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            source = io.BytesIO(bytes(source))
        self.source = None if source is None else getattr(source, "buffer", source)

    def read(self, n: int) -> bytes:
        if self.source is None:
            return os.read(0, n)
        # read1 returns what is there (a pipe or terminal) instead of waiting for n bytes.
        reader = getattr(self.source, "read1", self.source.read)
        data = reader(n)
        return data.encode() if isinstance(data, str) else data


@dataclass
class ProcessState:
    """One sandbox's kernel-side state: program break, mmap area, thread pointer, stdio."""

    layout: WindowLayout
    base: int
    tp_slot: int  # window offset of __tmebox_tp
    stdin: Source
    stdout: Sink
    stderr: Sink
    brk: int = 0
    maps: list[tuple[int, int]] = field(default_factory=list)  # sorted [start, end) offsets
    parked: bool = False

    def __post_init__(self) -> None:
        if not self.brk:
            self.brk = self.layout.heap

    # The mmap area grows down from layout.mmap_top and never meets the break.
    def map_floor(self) -> int:
        return page_up(self.brk)

    def mmap_alloc(self, length: int) -> int | None:
        """Window offset of a fresh zeroed range of length bytes (page multiple), or None."""
        top = self.layout.mmap_top
        for start, end in reversed(self.maps):
            if top - end >= length:
                break
            top = start
        lo = top - length
        if lo < self.map_floor():
            return None
        self._insert(lo, top)
        return lo

    def _insert(self, lo: int, hi: int) -> None:
        self._remove(lo, hi)
        bisect.insort(self.maps, (lo, hi))
        merged: list[tuple[int, int]] = []
        for s, e in self.maps:
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self.maps = merged

    def _remove(self, lo: int, hi: int) -> None:
        kept: list[tuple[int, int]] = []
        for s, e in self.maps:
            if e <= lo or s >= hi:
                kept.append((s, e))
                continue
            if s < lo:
                kept.append((s, lo))
            if e > hi:
                kept.append((hi, e))
        self.maps = kept

    def lowest_map(self) -> int:
        return self.maps[0][0] if self.maps else self.layout.mmap_top


def _timespec(ns: int) -> bytes:
    return (ns // 1_000_000_000).to_bytes(8, "little") + (ns % 1_000_000_000).to_bytes(
        8, "little")


def _iovecs(mem: SandboxMemory, iov: int, count: int) -> list[tuple[int, int]] | int:
    if count < 0 or count > IOV_MAX:
        return -errno.EINVAL
    if not mem.ok(iov, 16 * count, False):
        return -errno.EFAULT
    raw = mem.read(iov, 16 * count)
    vecs = []
    for i in range(count):
        base = int.from_bytes(raw[16 * i:16 * i + 8], "little")
        n = int.from_bytes(raw[16 * i + 8:16 * i + 16], "little")
        if n >> 63:
            return -errno.EINVAL
        vecs.append((base, n))
    return vecs


def _clip(vecs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, room = [], IO_CHUNK
    for base, n in vecs:
        if room <= 0:
            break
        out.append((base, min(n, room)))
        room -= n
    return out


def _write(st: ProcessState, mem: SandboxMemory, fd: int, vecs: list[tuple[int, int]]) -> int:
    sink = st.stdout if fd == 1 else st.stderr if fd == 2 else None
    if sink is None:
        return -errno.EBADF
    for base, n in vecs:
        if n and not mem.ok(base, n, False):
            return -errno.EFAULT
    data = b"".join(mem.read(base, n) for base, n in _clip(vecs) if n)
    return sink.write(data) if data else 0


def _read(st: ProcessState, mem: SandboxMemory, fd: int, vecs: list[tuple[int, int]]) -> int:
    if fd != 0:
        return -errno.EBADF
    for base, n in vecs:
        if n and not mem.ok(base, n, True):
            return -errno.EFAULT
    total = 0
    for base, n in _clip(vecs):
        if not n:
            continue
        data = st.stdin.read(n)
        mem.write(base, data)
        total += len(data)
        if len(data) < n:
            break
    return total


def _brk(st: ProcessState, mem: SandboxMemory, addr: int) -> int:
    want = addr & OFFSET_MASK
    if addr and st.layout.heap <= want <= st.lowest_map():
        old_top, new_top = page_up(st.brk), page_up(want)
        if new_top < old_top:
            mem.release(new_top, old_top - new_top)
        st.brk = want
    return st.base + st.brk


def _mmap(st: ProcessState, mem: SandboxMemory, addr: int, length: int, prot: int,
          flags: int) -> int:
    if prot & PROT_EXEC:
        return -errno.EPERM
    if flags & MAP_SHARED or not flags & MAP_ANONYMOUS or not flags & MAP_PRIVATE:
        return -errno.ENODEV
    if length <= 0 or length >= abi.WINDOW_SIZE:
        return -errno.EINVAL
    length = page_up(length)
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
        lo = addr & OFFSET_MASK
        if lo % PAGE or lo < st.map_floor() or lo + length > st.layout.mmap_top:
            return -errno.ENOMEM
        if flags & MAP_FIXED_NOREPLACE and any(s < lo + length and e > lo for s, e in st.maps):
            return -errno.EEXIST
        mem.release(lo, length)
        st._insert(lo, lo + length)
        return st.base + lo
    lo = st.mmap_alloc(length)
    return -errno.ENOMEM if lo is None else st.base + lo


def _munmap(st: ProcessState, mem: SandboxMemory, addr: int, length: int) -> int:
    lo = addr & OFFSET_MASK
    if lo % PAGE or length <= 0:
        return -errno.EINVAL
    length = page_up(length)
    if lo < st.map_floor() or lo + length > st.layout.mmap_top:
        return -errno.EINVAL
    mem.release(lo, length)
    st._remove(lo, lo + length)
    return 0


def _mprotect(st: ProcessState, mem: SandboxMemory, addr: int, length: int, prot: int) -> int:
    # Memory stays RW whatever the sandbox asks: isolation rests on the window,
    # and the host must be able to access every mapped sandbox page.
    if prot & PROT_EXEC:
        return -errno.EACCES
    if (addr & OFFSET_MASK) % PAGE or not mem.ok(addr, page_up(length), False):
        return -errno.ENOMEM
    return 0


def handle(nr: int, args: tuple[int, int, int, int, int, int], mem: SandboxMemory,
           st: ProcessState) -> int | Exit | Park:
    """Service one runtime call; the result is what `syscall` would leave in %rax."""
    a0, a1, a2, a3, a4, a5 = args
    if nr == SYS_WRITE:
        return _write(st, mem, a0, [(a1, a2)]) if a2 >> 63 == 0 else -errno.EINVAL
    if nr == SYS_WRITEV:
        vecs = _iovecs(mem, a1, a2 & OFFSET_MASK if a2 >> 31 == 0 else -1)
        return vecs if isinstance(vecs, int) else _write(st, mem, a0, vecs)
    if nr == SYS_READ:
        return _read(st, mem, a0, [(a1, a2)]) if a2 >> 63 == 0 else -errno.EINVAL
    if nr == SYS_READV:
        vecs = _iovecs(mem, a1, a2 & OFFSET_MASK if a2 >> 31 == 0 else -1)
        return vecs if isinstance(vecs, int) else _read(st, mem, a0, vecs)
    if nr in (SYS_EXIT, SYS_EXIT_GROUP):
        return Exit(a0 & 0xFF)
    if nr == SYS_BRK:
        return _brk(st, mem, a0)
    if nr == SYS_MMAP:
        return _mmap(st, mem, a0, a1, a2, a3)
    if nr == SYS_MUNMAP:
        return _munmap(st, mem, a0, a1)
    if nr == SYS_MPROTECT:
        return _mprotect(st, mem, a0, a1, a2)
    if nr == SYS_MADVISE:
        if a2 == MADV_DONTNEED:
            lo = a0 & OFFSET_MASK
            if lo % PAGE or not mem.ok(lo, page_up(a1), True):
                return -errno.EINVAL
            mem.release(lo, page_up(a1))
        return 0
    if nr == SYS_CLOCK_GETTIME:
        if a0 in _CPU_CLOCKS:
            ns = time.thread_time_ns()
        elif a0 in _CLOCKS:
            ns = time.clock_gettime_ns(_CLOCKS[a0])
        else:
            return -errno.EINVAL
        if not mem.ok(a1, 16, True):
            return -errno.EFAULT
        mem.write(a1, _timespec(ns))
        return 0
    if nr == SYS_CLOCK_GETRES:
        if a0 not in _CLOCKS and a0 not in _CPU_CLOCKS:
            return -errno.EINVAL
        if a1:
            if not mem.ok(a1, 16, True):
                return -errno.EFAULT
            mem.write(a1, _timespec(1))
        return 0
    if nr == SYS_GETTIMEOFDAY:
        if a0:
            if not mem.ok(a0, 16, True):
                return -errno.EFAULT
            us = time.time_ns() // 1000
            mem.write(a0, (us // 1_000_000).to_bytes(8, "little")
                      + (us % 1_000_000).to_bytes(8, "little"))
        return 0
    if nr == SYS_GETRANDOM:
        n = min(a1, IO_CHUNK)
        if not mem.ok(a0, n, True):
            return -errno.EFAULT
        mem.write(a0, os.urandom(n))
        return n
    if nr == SYS_IOCTL:
        if a0 not in (0, 1, 2):
            return -errno.EBADF
        return -errno.ENOTTY if a1 == TIOCGWINSZ else -errno.EINVAL
    if nr == SYS_ARCH_PRCTL:
        if a0 == ARCH_SET_FS:
            mem.write_u64(st.tp_slot, a1)
            return 0
        if a0 == ARCH_GET_FS:
            if not mem.ok(a1, 8, True):
                return -errno.EFAULT
            mem.write_u64(a1, mem.read_u64(st.tp_slot))
            return 0
        return -errno.EINVAL
    if nr in (SYS_SET_TID_ADDRESS, SYS_GETPID, SYS_GETTID):
        return SANDBOX_PID
    if nr == SYS_RT_SIGPROCMASK:
        # Signals never reach sandbox code; an empty old mask is the truth.
        if a2:
            if not mem.ok(a2, 8, True):
                return -errno.EFAULT
            mem.write(a2, bytes(8))
        return 0
    if nr in (SYS_RT_SIGACTION, SYS_SIGALTSTACK, SYS_SCHED_YIELD, SYS_CLOSE):
        return 0
    if nr == SYS_FUTEX:
        # One thread per sandbox: nobody to wake, nothing to wait for.
        return 0
    if nr == SYS_LSEEK:
        return -errno.ESPIPE if a0 in (0, 1, 2) else -errno.EBADF
    if nr in (SYS_KILL, SYS_TKILL, SYS_TGKILL):
        target = a1 if nr == SYS_TGKILL else a0
        sig = a2 if nr == SYS_TGKILL else a1
        if target != SANDBOX_PID:
            return -errno.ESRCH
        return Exit(128 + sig, signal=sig) if sig else 0
    if nr == abi.SYS_TMEBOX_PARK and not st.parked:
        st.parked = True
        return Park()
    return -errno.ENOSYS
