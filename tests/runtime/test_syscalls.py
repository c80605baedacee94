"""The runtime-call implementation against an in-memory sandbox (no backend needed)."""

from __future__ import annotations

import errno
import io
import struct

import pytest

from tmebox.runtime import files
from tmebox.runtime import syscalls as sc
from tmebox.runtime.files import FileTable
from tmebox.runtime.layout import WindowLayout
from tmebox.runtime.memory import SandboxMemory
from tmebox.runtime.streams import Sink, Source
from tmebox.trusted import abi
from tmebox.trusted.record import replace

BASE = 7 << 32


class ByteMemory(SandboxMemory):
    """Window offsets [lo, hi) backed by a bytearray."""

    def __init__(self, layout: WindowLayout) -> None:
        super().__init__(layout.code_lo, layout.rw_lo, layout.rw_lo + (8 << 20))
        self.buf = bytearray(self.hi - self.read_lo)
        self.released: list[tuple[int, int]] = []

    def _read(self, off, n):
        return bytes(self.buf[off - self.read_lo:off - self.read_lo + n])

    def _write(self, off, data):
        self.buf[off - self.read_lo:off - self.read_lo + len(data)] = data

    def _release(self, off, n):
        self.released.append((off, n))
        self._write(off, bytes(n))


@pytest.fixture
def env():
    layout = WindowLayout.for_image(0x2000, 0x12000, 0x13000, 0x2000, 0x12000)
    # a small window: the mmap area ends 8 MiB above the RW start
    layout = replace(layout, mmap_top=layout.rw_lo + (8 << 20), rw_hi=layout.rw_lo + (8 << 20))
    mem = ByteMemory(layout)
    out, err = bytearray(), io.BytesIO()
    table = FileTable.open(Source(b"abcdef"), Sink(out, 1), Sink(err, 2))
    st = sc.ProcessState(layout=layout, base=BASE, tp_slot=layout.data, files=table)
    return mem, st, out, err


def call(env, nr, *args):
    mem, st, _, _ = env
    return sc.handle(nr, (*args, *(0,) * (6 - len(args))), mem, st)


def test_write_and_writev_go_to_the_given_sinks(env):
    mem, st, out, err = env
    buf = BASE + st.layout.data + 64
    mem.write(buf, b"hello world")
    assert call(env, sc.SYS_WRITE, 1, buf, 5) == 5
    iov = buf + 256
    mem.write(iov, struct.pack("<QQQQ", buf + 6, 5, buf + 5, 1))
    assert call(env, sc.SYS_WRITEV, 2, iov, 2) == 6
    assert out == b"hello"
    assert err.getvalue() == b"world "
    assert call(env, sc.SYS_WRITE, 0, buf, 1) == -errno.EBADF
    assert call(env, sc.SYS_WRITE, 7, buf, 1) == -errno.EBADF


def test_pointers_use_their_low_32_bits_and_are_bounds_checked(env):
    mem, st, out, _ = env
    off = st.layout.data + 64
    mem.write(off, b"xyz")
    # a forged upper half (another window, or the host) is ignored: same bytes
    assert call(env, sc.SYS_WRITE, 1, (0x1234 << 32) | off, 3) == 3
    assert out == b"xyz"
    assert call(env, sc.SYS_WRITE, 1, BASE + 0x100, 8) == -errno.EFAULT  # guard
    assert call(env, sc.SYS_WRITE, 1, BASE + 0xFFFF_FFF0, 32) == -errno.EFAULT  # wraps
    assert call(env, sc.SYS_READ, 0, BASE + st.layout.code_lo + 4096, 4) == -errno.EFAULT
    assert call(env, sc.SYS_WRITEV, 1, BASE + 0x10, 1) == -errno.EFAULT
    assert call(env, sc.SYS_WRITEV, 1, BASE + off, 5000) == -errno.EINVAL


def test_read_and_readv_take_stdin(env):
    mem, st, _, _ = env
    buf = BASE + st.layout.data + 128
    assert call(env, sc.SYS_READ, 0, buf, 2) == 2
    iov = buf + 64
    mem.write(iov, struct.pack("<QQQQ", buf + 2, 3, buf + 5, 10))
    assert call(env, sc.SYS_READV, 0, iov, 2) == 4
    assert mem.read(buf, 6) == b"abcdef"
    assert call(env, sc.SYS_READ, 0, buf, 4) == 0  # end of input
    assert call(env, sc.SYS_READ, 1, buf, 4) == -errno.EBADF


def test_brk_grows_and_shrinks_within_the_window(env):
    mem, st, _, _ = env
    start = call(env, sc.SYS_BRK, 0)
    assert start == BASE + st.layout.heap
    assert call(env, sc.SYS_BRK, start + 3 * 4096) == start + 3 * 4096
    mem.write(start + 4096, b"\x55" * 16)
    assert call(env, sc.SYS_BRK, start + 100) == start + 100
    assert mem.read(start + 4096, 16) == bytes(16)  # given back, reads as zero
    assert call(env, sc.SYS_BRK, start - 4096) == start + 100  # below the heap: refused
    assert call(env, sc.SYS_BRK, BASE + st.layout.mmap_top + 4096) == start + 100


def test_mmap_munmap_mprotect(env):
    mem, st, _, _ = env
    anon = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS
    rw = sc.PROT_READ | sc.PROT_WRITE
    a = call(env, sc.SYS_MMAP, 0, 10000, rw, anon, -1 & (2**64 - 1), 0)
    assert a > 0 and (a - BASE) % 4096 == 0
    assert a - BASE + 12288 == st.layout.mmap_top
    b = call(env, sc.SYS_MMAP, 0, 4096, rw, anon, 0, 0)
    assert b == a - 4096
    mem.write(a, b"data")
    assert call(env, sc.SYS_MUNMAP, a, 12288) == 0
    assert mem.read(a, 4) == bytes(4)
    assert call(env, sc.SYS_MMAP, 0, 4096, rw, anon, 0, 0) == st.layout.mmap_top - 4096 + BASE
    assert call(env, sc.SYS_MMAP, 0, 4096, rw | sc.PROT_EXEC, anon, 0, 0) == -errno.EPERM
    assert call(env, sc.SYS_MMAP, 0, 4096, rw, sc.MAP_SHARED | sc.MAP_ANONYMOUS, 0, 0) \
        == -errno.ENODEV
    assert call(env, sc.SYS_MMAP, 0, 4096, rw, sc.MAP_PRIVATE, 3, 0) == -errno.ENODEV
    assert call(env, sc.SYS_MMAP, 0, 1 << 40, rw, anon, 0, 0) == -errno.EINVAL
    assert call(env, sc.SYS_MMAP, 0, 64 << 20, rw, anon, 0, 0) == -errno.ENOMEM
    fixed = BASE + st.layout.mmap_top - 64 * 4096
    assert call(env, sc.SYS_MMAP, fixed, 4096, rw, anon | sc.MAP_FIXED, 0, 0) == fixed
    assert call(env, sc.SYS_MMAP, fixed, 4096, rw, anon | sc.MAP_FIXED_NOREPLACE, 0, 0) \
        == -errno.EEXIST
    assert call(env, sc.SYS_MMAP, BASE + st.layout.data, 4096, rw, anon | sc.MAP_FIXED, 0, 0) \
        == -errno.ENOMEM
    assert call(env, sc.SYS_MPROTECT, b, 4096, sc.PROT_READ) == 0
    assert call(env, sc.SYS_MPROTECT, b, 4096, sc.PROT_READ | sc.PROT_EXEC) == -errno.EACCES
    assert call(env, sc.SYS_MUNMAP, BASE + st.layout.data, 4096) == -errno.EINVAL
    assert call(env, sc.SYS_MUNMAP, b + 1, 4096) == -errno.EINVAL


def test_heap_and_mmap_area_never_overlap(env):
    mem, st, _, _ = env
    anon = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS
    start = call(env, sc.SYS_BRK, 0)
    top = call(env, sc.SYS_MMAP, 0, 4 << 20, 3, anon, 0, 0)
    assert call(env, sc.SYS_BRK, top + 4096) == start  # would run into the mapping
    assert call(env, sc.SYS_BRK, top) == top
    assert call(env, sc.SYS_MMAP, 0, 4096, 3, anon, 0, 0) == -errno.ENOMEM


def test_clocks_random_and_identity(env):
    mem, st, _, _ = env
    p = BASE + st.layout.data + 512
    assert call(env, sc.SYS_CLOCK_GETTIME, 1, p) == 0
    sec, nsec = struct.unpack("<qq", mem.read(p, 16))
    assert sec > 0 and 0 <= nsec < 10**9
    assert call(env, sc.SYS_CLOCK_GETTIME, 99, p) == -errno.EINVAL
    assert call(env, sc.SYS_CLOCK_GETTIME, 0, BASE + 8) == -errno.EFAULT
    assert call(env, sc.SYS_GETTIMEOFDAY, p, 0) == 0
    assert call(env, sc.SYS_GETRANDOM, p, 32, 0) == 32
    assert mem.read(p, 32) != bytes(32)
    assert call(env, sc.SYS_IOCTL, 1, files.TIOCGWINSZ, p) == -errno.ENOTTY
    assert call(env, sc.SYS_SET_TID_ADDRESS, p) == sc.SANDBOX_PID
    assert call(env, sc.SYS_RT_SIGPROCMASK, 0, 0, p) == 0
    assert call(env, sc.SYS_LSEEK, 0, 0, 1) == -errno.ESPIPE


def test_arch_prctl_sets_the_thread_pointer_slot(env):
    mem, st, _, _ = env
    assert call(env, sc.SYS_ARCH_PRCTL, sc.ARCH_SET_FS, BASE + 0x12345) == 0
    assert mem.read_u64(st.tp_slot) == BASE + 0x12345
    p = BASE + st.layout.data + 64
    assert call(env, sc.SYS_ARCH_PRCTL, sc.ARCH_GET_FS, p) == 0
    assert mem.read_u64(p) == BASE + 0x12345
    assert call(env, sc.SYS_ARCH_PRCTL, 0x1001, 0) == -errno.EINVAL  # ARCH_SET_GS


def test_exit_park_signals_and_the_rest(env):
    assert call(env, sc.SYS_EXIT_GROUP, 0x1FF) == sc.Exit(0xFF)
    assert call(env, sc.SYS_EXIT, 3) == sc.Exit(3)
    assert call(env, abi.SYS_TMEBOX_PARK) == sc.Park()
    assert call(env, abi.SYS_TMEBOX_PARK) == -errno.ENOSYS  # only once
    assert call(env, sc.SYS_TKILL, sc.SANDBOX_PID, 6) == sc.Exit(134, signal=6)
    assert call(env, sc.SYS_KILL, 4242, 9) == -errno.ESRCH
    for nr in (56, 57, 59, 41, 42, 101, 165, 88):  # fork clone execve socket ptrace mount symlink
        assert call(env, nr, 0) == -errno.ENOSYS


def test_huge_transfers_are_short_not_host_sized(env):
    mem, st, out, _ = env
    p = BASE + st.layout.rw_lo
    n = 6 << 20  # all of this test window's RW memory
    assert call(env, sc.SYS_WRITE, 1, p, n) == sc.IO_CHUNK
    assert len(out) == sc.IO_CHUNK
    assert call(env, sc.SYS_GETRANDOM, p, n, 0) == sc.IO_CHUNK
    st.files.entries[0] = Source(b"x" * (3 << 20))
    assert call(env, sc.SYS_READ, 0, p, n) == sc.IO_CHUNK
