"""Runtime calls: the Linux system-call subset a sandbox may use, for every backend.

`handle()` gets the number and six arguments of a rewritten `syscall` and
returns the result (negative errno on failure) or an action (`Exit`, `Park`).
It touches nothing of the host but the three standard streams given to spawn() and the
directories preopened for the sandbox (`tmebox.runtime.files`): no other file, no socket,
no process is reachable. Sandbox pointers are used by their low 32 bits and
bounds-checked (-EFAULT).
"""

from __future__ import annotations

import bisect
import errno
import os
import struct
import time
from collections.abc import Callable

from tmebox.runtime import files
from tmebox.runtime.files import FileTable, OpenFile
from tmebox.runtime.layout import PAGE, WindowLayout, page_up
from tmebox.runtime.memory import OFFSET_MASK, SandboxMemory
from tmebox.runtime.streams import Sink, Source, Waker
from tmebox.trusted import abi
from tmebox.trusted.record import Record, field

__all__ = ["SANDBOX_PID", "Exit", "Park", "ProcessState", "handle"]

# x86-64 system call numbers
SYS_READ, SYS_WRITE, SYS_CLOSE = 0, 1, 3
SYS_LSEEK, SYS_MMAP, SYS_MPROTECT, SYS_MUNMAP, SYS_BRK = 8, 9, 10, 11, 12
SYS_MREMAP, MREMAP_MAYMOVE = 25, 1
SYS_RT_SIGACTION, SYS_RT_SIGPROCMASK, SYS_IOCTL = 13, 14, 16
SYS_READV, SYS_WRITEV, SYS_SCHED_YIELD, SYS_MADVISE = 19, 20, 24, 28
SYS_GETPID, SYS_EXIT, SYS_KILL, SYS_GETTIMEOFDAY = 39, 60, 62, 96
SYS_SIGALTSTACK, SYS_ARCH_PRCTL, SYS_GETTID, SYS_TKILL, SYS_FUTEX = 131, 158, 186, 200, 202
SYS_SET_TID_ADDRESS, SYS_CLOCK_GETTIME, SYS_CLOCK_GETRES, SYS_EXIT_GROUP = 218, 228, 229, 231
SYS_TGKILL, SYS_GETRANDOM = 234, 318
SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP = 35, 230
TIMER_ABSTIME = 1

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED = 4
ARCH_SET_FS, ARCH_GET_FS = 0x1002, 0x1003
IOV_MAX = 1024
# One runtime call moves at most this much (a short count, as Linux may return), so a
# tenant cannot make the host allocate gigabytes at once.
IO_CHUNK = 1 << 20
SANDBOX_PID = 1  # the only process and thread a sandbox can name

# Clocks a sandbox may read; the CPU-time clocks read this thread's time.
_CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 4: time.CLOCK_MONOTONIC_RAW,
           5: time.CLOCK_REALTIME, 6: time.CLOCK_MONOTONIC, 7: time.CLOCK_BOOTTIME}
_CPU_CLOCKS = (2, 3)


class Exit(Record, frozen=True):
    """The sandbox ended: exit_group(status), or it signalled itself (abort)."""

    status: int
    signal: int | None = None


class Park(Record, frozen=True):
    """The crt finished initialising libc and waits for run() (abi.SYS_TMEBOX_PARK)."""


class ProcessState(Record):
    """One sandbox's kernel-side state: program break, mmap area, thread pointer, files."""

    layout: WindowLayout
    base: int
    tp_slot: int  # window offset of __tmebox_tp
    files: FileTable
    brk: int = 0
    maps: list[tuple[int, int]] = field(default_factory=list)  # sorted [start, end) offsets
    parked: bool = False
    # The running call's deadline (CLOCK_MONOTONIC ns, 0: none): a wait ends there.
    deadline: Callable[[], int] = lambda: 0
    waker: Waker = field(default_factory=Waker)  # Sandbox.interrupt() ends a wait with it
    memory_limit: int | None = None  # bytes of heap (above the image's end) and mmap
    _mem: SandboxMemory | None = None  # set by confine(): protect() changes its pages

    def __post_init__(self) -> None:
        if not self.brk:
            self.brk = self.layout.heap

    def confine(self, mem: SandboxMemory) -> None:
        """With a memory_limit: what is neither below the break nor mapped becomes
        inaccessible, to the sandbox (it faults) and to the host, so that the limit bounds
        what can be touched and not only what brk and mmap report."""
        self._mem = mem
        mem.confine(self.covers)
        at = page_up(self.brk)
        for s, e in [*self.maps, (self.layout.mmap_top, self.layout.mmap_top)]:
            mem.protect(at, s, False)
            at = e

    def covers(self, off: int, n: int) -> bool:
        """Whether window offsets [off, off+n) are the sandbox's: below the break's page
        (its code, stack, data and heap), or inside one mapping."""
        end = off + n
        return end <= page_up(self.brk) or any(s <= off and end <= e for s, e in self.maps)

    def protect(self, lo: int, hi: int, accessible: bool) -> None:
        if self._mem is not None:
            self._mem.protect(lo, hi, accessible)

    def owned(self) -> list[tuple[int, int]]:
        """Window offsets [start, end) of the RW memory that is the sandbox's: the stack,
        data and heap up to the break's page, and every mapping."""
        return [(self.layout.rw_lo, page_up(self.brk)), *self.maps]

    def release(self, mem: SandboxMemory, lo: int, hi: int) -> None:
        """Give pages [lo, hi) back: they read as zeros. With a memory_limit only the parts
        that are the sandbox's are touched; the others are inaccessible and zero already."""
        if self._mem is None:
            mem.release(lo, hi - lo)
            return
        for s, e in self.owned():
            if max(lo, s) < min(hi, e):
                mem.release(max(lo, s), min(hi, e) - max(lo, s))

    def fits(self, lo: int, hi: int, brk: int | None = None) -> bool:
        """Whether mapping [lo, hi) (and moving the break to brk) stays in memory_limit."""
        if self.memory_limit is None:
            return True
        mapped = sum(e - s for s, e in self.maps)
        mapped += (hi - lo) - sum(max(0, min(e, hi) - max(s, lo)) for s, e in self.maps)
        heap = page_up(self.brk if brk is None else brk) - self.layout.heap
        return mapped + heap <= self.memory_limit

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
        if lo < self.map_floor() or not self.fits(lo, top):
            return None
        self._insert(lo, top)
        self.protect(lo, top, True)
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
    entry = st.files.get(fd)
    if not isinstance(entry, Sink | OpenFile):
        return -errno.EBADF
    for base, n in vecs:
        if n and not mem.ok(base, n, False):
            return -errno.EFAULT
    data = b"".join(mem.read(base, n) for base, n in _clip(vecs) if n)
    if not data:
        return 0
    return entry.write(data) if isinstance(entry, Sink) else files.write_file(entry, data)


def _read(st: ProcessState, mem: SandboxMemory, fd: int, vecs: list[tuple[int, int]]) -> int:
    entry = st.files.get(fd)
    if not isinstance(entry, Source | OpenFile):
        return -errno.EBADF
    for base, n in vecs:
        if n and not mem.ok(base, n, True):
            return -errno.EFAULT
    if isinstance(entry, OpenFile):
        return files.read_file(entry, mem, _clip(vecs))
    total = 0
    for base, n in _clip(vecs):
        if not n:
            continue
        data = entry.read(n, st.waker, st.deadline())
        if data is None:  # the wait ended: the call is out of time, or interrupted
            return total or -errno.EINTR
        mem.write(base, data)
        total += len(data)
        if len(data) < n:
            break
    return total


def _brk(st: ProcessState, mem: SandboxMemory, addr: int) -> int:
    want = addr & OFFSET_MASK
    if addr and st.layout.heap <= want <= st.lowest_map() and st.fits(0, 0, want):
        old_top, new_top = page_up(st.brk), page_up(want)
        if new_top < old_top:
            mem.release(new_top, old_top - new_top)
            st.protect(new_top, old_top, False)
        else:
            st.protect(old_top, new_top, True)
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
        if not st.fits(lo, lo + length):
            return -errno.ENOMEM
        st.release(mem, lo, lo + length)
        st._insert(lo, lo + length)
        st.protect(lo, lo + length, True)
        return st.base + lo
    fresh = st.mmap_alloc(length)
    return -errno.ENOMEM if fresh is None else st.base + fresh


def _munmap(st: ProcessState, mem: SandboxMemory, addr: int, length: int) -> int:
    lo = addr & OFFSET_MASK
    if lo % PAGE or length <= 0:
        return -errno.EINVAL
    length = page_up(length)
    if lo < st.map_floor() or lo + length > st.layout.mmap_top:
        return -errno.EINVAL
    st.release(mem, lo, lo + length)
    st._remove(lo, lo + length)
    st.protect(lo, lo + length, False)
    return 0


def _mremap(st: ProcessState, mem: SandboxMemory, addr: int, old_size: int, new_size: int,
            flags: int) -> int:
    """Linux's mremap for the sandbox's own mappings: shrink, grow in place where the pages
    after it are free, or (MREMAP_MAYMOVE) move to a fresh range; no fixed target."""
    lo = addr & OFFSET_MASK
    if lo % PAGE or flags & ~MREMAP_MAYMOVE or old_size <= 0 or not 0 < new_size < \
            abi.WINDOW_SIZE:
        return -errno.EINVAL
    old_len, new_len = page_up(old_size), page_up(new_size)
    hi, want = lo + old_len, lo + new_len
    if lo < st.map_floor() or not any(s <= lo and hi <= e for s, e in st.maps):
        return -errno.EFAULT
    if new_len <= old_len:
        if new_len < old_len:
            _munmap(st, mem, st.base + want, old_len - new_len)
        return st.base + lo
    if (want <= st.layout.mmap_top and not any(s < want and e > hi for s, e in st.maps)
            and st.fits(hi, want)):
        st._insert(hi, want)
        st.protect(hi, want, True)
        return st.base + lo
    if not flags & MREMAP_MAYMOVE:
        return -errno.ENOMEM
    fresh = st.mmap_alloc(new_len)
    if fresh is None:
        return -errno.ENOMEM
    mem.move(lo, fresh, old_len)
    st._remove(lo, hi)
    st.protect(lo, hi, False)
    return st.base + fresh


def _mprotect(st: ProcessState, mem: SandboxMemory, addr: int, length: int, prot: int) -> int:
    # Memory stays RW whatever the sandbox asks: isolation rests on the window,
    # and the host must be able to access every mapped sandbox page.
    if prot & PROT_EXEC:
        return -errno.EACCES
    if (addr & OFFSET_MASK) % PAGE or not mem.ok(addr, page_up(length), False):
        return -errno.ENOMEM
    return 0


Args = tuple[int, int, int, int, int, int]
Result = int | Exit | Park


def _sys_write(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return _write(st, mem, a[0], [(a[1], a[2])]) if a[2] >> 63 == 0 else -errno.EINVAL


def _sys_writev(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    vecs = _iovecs(mem, a[1], a[2] if a[2] >> 31 == 0 else -1)
    return vecs if isinstance(vecs, int) else _write(st, mem, a[0], vecs)


def _sys_read(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return _read(st, mem, a[0], [(a[1], a[2])]) if a[2] >> 63 == 0 else -errno.EINVAL


def _sys_readv(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    vecs = _iovecs(mem, a[1], a[2] if a[2] >> 31 == 0 else -1)
    return vecs if isinstance(vecs, int) else _read(st, mem, a[0], vecs)


def _sys_exit(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return Exit(a[0] & 0xFF)


def _sys_madvise(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if a[2] == MADV_DONTNEED:
        lo = a[0] & OFFSET_MASK
        if lo % PAGE or not mem.ok(lo, page_up(a[1]), True):
            return -errno.EINVAL
        mem.release(lo, page_up(a[1]))
    return 0


def _store(mem: SandboxMemory, addr: int, data: bytes) -> int:
    """Write data at a sandbox pointer: 0, or -EFAULT if it is not writable there."""
    if not mem.ok(addr, len(data), True):
        return -errno.EFAULT
    mem.write(addr, data)
    return 0


def _sys_clock_gettime(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if a[0] in _CPU_CLOCKS:
        ns = time.thread_time_ns()
    elif a[0] in _CLOCKS:
        ns = time.clock_gettime_ns(_CLOCKS[a[0]])
    else:
        return -errno.EINVAL
    return _store(mem, a[1], _timespec(ns))


def _sleep(mem: SandboxMemory, st: ProcessState, clock: int, flags: int, req: int) -> Result:
    """Sleep as the request says, but never past the call's deadline nor an interrupt():
    the sandbox then resumes and stops at once (the timeout counts the time asleep)."""
    if clock not in _CLOCKS or flags & ~TIMER_ABSTIME:
        return -errno.EINVAL
    if not mem.ok(req, 16, False):
        return -errno.EFAULT
    sec, nsec = struct.unpack("<qq", mem.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return -errno.EINVAL
    want = sec * 1_000_000_000 + nsec
    if flags & TIMER_ABSTIME:
        want -= time.clock_gettime_ns(_CLOCKS[clock])
    if want > 0:
        until = time.monotonic_ns() + want
        deadline = st.deadline()
        st.waker.wait(None, min(until, deadline) if deadline else until)
    return 0


def _sys_clock_getres(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if a[0] not in _CLOCKS and a[0] not in _CPU_CLOCKS:
        return -errno.EINVAL
    return _store(mem, a[1], _timespec(1)) if a[1] else 0


def _sys_gettimeofday(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if not a[0]:
        return 0
    us = time.time_ns() // 1000
    return _store(mem, a[0], (us // 1_000_000).to_bytes(8, "little")
                  + (us % 1_000_000).to_bytes(8, "little"))


def _sys_getrandom(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    n = min(a[1], IO_CHUNK)
    if not mem.ok(a[0], n, True):
        return -errno.EFAULT
    mem.write(a[0], os.urandom(n))
    return n


def _sys_arch_prctl(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if a[0] == ARCH_SET_FS:
        mem.write_u64(st.tp_slot, a[1])
        return 0
    if a[0] == ARCH_GET_FS:
        return _store(mem, a[1], mem.read(st.tp_slot, 8))
    return -errno.EINVAL


def _sys_pid(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return SANDBOX_PID


def _sys_sigprocmask(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    # Signals never reach sandbox code; an empty old mask is the truth.
    return _store(mem, a[2], bytes(8)) if a[2] else 0


def _sys_nothing(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    # sigaction, sigaltstack, sched_yield and futex: one thread per
    # sandbox has nobody to wake and nothing to wait for.
    return 0


def _kill(target: int, sig: int) -> Result:
    if not 0 <= sig <= 64:
        return -errno.EINVAL
    if target != SANDBOX_PID:
        return -errno.ESRCH
    return Exit((128 + sig) & 0xFF, signal=sig) if sig else 0


def _sys_kill(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return _kill(a[0], a[1])


def _sys_tgkill(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return _kill(a[1], a[2])


def _sys_park(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    if st.parked:
        return -errno.ENOSYS
    st.parked = True
    return Park()


_HANDLERS: dict[int, Callable[[Args, SandboxMemory, ProcessState], Result]] = {
    SYS_WRITE: _sys_write, SYS_WRITEV: _sys_writev, SYS_READ: _sys_read,
    SYS_READV: _sys_readv, SYS_EXIT: _sys_exit, SYS_EXIT_GROUP: _sys_exit,
    SYS_BRK: lambda a, mem, st: _brk(st, mem, a[0]),
    SYS_MMAP: lambda a, mem, st: _mmap(st, mem, a[0], a[1], a[2], a[3]),
    SYS_MUNMAP: lambda a, mem, st: _munmap(st, mem, a[0], a[1]),
    SYS_MREMAP: lambda a, mem, st: _mremap(st, mem, a[0], a[1], a[2], a[3]),
    SYS_MPROTECT: lambda a, mem, st: _mprotect(st, mem, a[0], a[1], a[2]),
    SYS_MADVISE: _sys_madvise, SYS_CLOCK_GETTIME: _sys_clock_gettime,
    SYS_CLOCK_GETRES: _sys_clock_getres, SYS_GETTIMEOFDAY: _sys_gettimeofday,
    SYS_GETRANDOM: _sys_getrandom, SYS_ARCH_PRCTL: _sys_arch_prctl,
    SYS_SET_TID_ADDRESS: _sys_pid, SYS_GETPID: _sys_pid, SYS_GETTID: _sys_pid,
    SYS_RT_SIGPROCMASK: _sys_sigprocmask, SYS_RT_SIGACTION: _sys_nothing,
    SYS_SIGALTSTACK: _sys_nothing, SYS_SCHED_YIELD: _sys_nothing,
    SYS_FUTEX: _sys_nothing, SYS_KILL: _sys_kill,
    SYS_TKILL: _sys_kill, SYS_TGKILL: _sys_tgkill, abi.SYS_TMEBOX_PARK: _sys_park,
    SYS_NANOSLEEP: lambda a, mem, st: _sleep(mem, st, 1, 0, a[0]),
    SYS_CLOCK_NANOSLEEP: lambda a, mem, st: _sleep(mem, st, a[0], a[1], a[2]),
}


def _on_files(fn: files.Handler) -> Callable[[Args, SandboxMemory, ProcessState], Result]:
    return lambda a, mem, st: fn(a, mem, st.files)


_HANDLERS.update({nr: _on_files(fn) for nr, fn in files.HANDLERS.items()})


def _enosys(a: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    return -errno.ENOSYS


def handle(nr: int, args: Args, mem: SandboxMemory, st: ProcessState) -> Result:
    """Service one runtime call; the result is what `syscall` would leave in %rax."""
    return _HANDLERS.get(nr, _enosys)(args, mem, st)
