"""Runtime calls serviced in C (runtime/native/tmebox_calls.c) against their specification,
tmebox.runtime.syscalls: random sequences of read/write/readv/writev/pread64/pwrite64/
lseek/fstat/clock_gettime/getrandom, with good and bad descriptors, sizes and pointers,
run with the C service, without it (every call in Python) and on the tme backend; results,
the file and what reached the host's fd 1 must be the same."""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path

import pytest
from c_image import build_c
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tmebox
from tmebox.runtime import files

SRC = r"""
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
int64_t sc(int64_t nr, int64_t a, int64_t b, int64_t c, int64_t d) {
    return syscall(nr, a, b, c, d);
}
int main(void) { return 0; }
"""
READ, WRITE, LSEEK, PREAD, PWRITE, READV, WRITEV, CLOCK = 0, 1, 8, 17, 18, 19, 20, 228
FSTAT, GETRANDOM = 5, 318
OPENAT, DUP2 = 257, 33
IO_CHUNK = 1 << 20

FDS = st.sampled_from([0, 1, 2, 3, 4, 5, 63, 1 << 32 | 3, -1])
SIZES = st.sampled_from([0, 1, 7, 100, 4096, IO_CHUNK + 5, 1 << 40, 1 << 63])
# where a pointer goes: the buffer, the code, past the end, the top guard, NULL, mid-buffer
WHERE = st.sampled_from(["buf", "code", "end", "top", "null", "mid"])
CALL = st.one_of(
    st.tuples(st.sampled_from([READ, WRITE]), FDS, WHERE, SIZES),
    st.tuples(st.sampled_from([READV, WRITEV]), FDS, WHERE,
              st.lists(st.tuples(WHERE, SIZES), max_size=4)),
    st.tuples(st.sampled_from([PREAD, PWRITE]), FDS, WHERE, SIZES,
              st.sampled_from([0, 3, 1 << 20, 1 << 63])),
    st.tuples(st.just(LSEEK), FDS, st.sampled_from([0, 5, -1, 1 << 62]),
              st.sampled_from([0, 1, 2, 7])),
    st.tuples(st.just(CLOCK), st.sampled_from([0, 1, 2, 4, 7, 8, 1 << 33]), WHERE),
    st.tuples(st.just(FSTAT), FDS, WHERE),
    st.tuples(st.just(GETRANDOM), WHERE, SIZES),
)


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "direct", SRC)


def run_sequence(backend: str, image: Path, tmp: Path, calls: list, direct: bool,
                 monkeypatch, host_stdin: bytes | None = None) -> tuple[list[object], bytes, bytes]:
    """Results of the calls (clock values reduced to 'ok'), the file, and fd 1's bytes.
    host_stdin: the guest's fd 0 is the host's, a regular file holding these bytes."""
    if host_stdin is not None:
        (tmp / "in").write_bytes(host_stdin)
        with open(tmp / "in", "rb") as f:
            saved = os.dup(0)
            os.dup2(f.fileno(), 0)
        try:
            return run_sequence(backend, image, tmp, calls, direct, monkeypatch)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "f").write_bytes(bytes(range(256)) * 40)
    out = tmp / "out"
    with monkeypatch.context() as m:
        if not direct:
            m.setattr(files.FileTable, "watch_with", lambda self, watch: None)
        with tmebox.Runtime(backend=backend) as rt, open(out, "wb") as stdout:
            sb = rt.spawn(rt.load(image), dirs={"/d": (str(data), "rw")}, stdout=None,
                          stdin=None if _fd0_is_a_file() else b"from stdin")
            # fd 1 is the host's fd 1 (a Sink of the host fd): point that at `out`
            saved = os.dup(1)
            os.dup2(stdout.fileno(), 1)
            try:
                return _drive(sb, calls), (data / "f").read_bytes(), b""
            finally:
                os.dup2(saved, 1)
                os.close(saved)


def _fd0_is_a_file() -> bool:
    return stat.S_ISREG(os.fstat(0).st_mode)


def _sc(sb, nr: int, *args: int) -> int:
    signed = [(a & (2**64 - 1)) - (2**64 if (a & (2**64 - 1)) >> 63 else 0) for a in args]
    return sb.call("sc", nr, *signed)


def _drive(sb, calls) -> list[object]:
    size = 2 * IO_CHUNK + 3 * 4096  # the guest's own mmap, on both backends alike
    buf = _sc(sb, 9, 0, size, 3, 0x22)
    assert buf > 0
    L = sb._layout
    # "code": past the runtime page, which differs between backends
    where = {"buf": buf, "code": sb.base + L.code_lo + 4096, "end": buf + size - 50,
             "top": sb.base + L.rw_hi - 8, "null": 0, "mid": buf + IO_CHUNK + 3}
    sb.memory.write(buf, bytes(range(256)) * 16)
    path = buf + 2 * IO_CHUNK + 8192
    sb.memory.write(path, b"/d/f\0")
    assert _sc(sb, OPENAT, -100, path, 2, 0) == 3  # fd 3: the file, read-write
    assert _sc(sb, OPENAT, -100, path, 0, 0) == 4  # fd 4: the file, read-only
    iov = buf + 2 * IO_CHUNK + 4096
    results: list[object] = []
    for c in calls:
        nr, fd = c[0], c[1]
        if nr in (READ, WRITE):
            r = _sc(sb, nr, fd, where[c[2]], c[3], 0)
        elif nr in (READV, WRITEV):
            sb.memory.write(iov, b"".join(struct.pack("<QQ", where[w], n & (2**64 - 1))
                                          for w, n in c[3]))
            r = _sc(sb, nr, fd, where[c[2]] if c[2] != "buf" else iov, len(c[3]), 0)
        elif nr in (PREAD, PWRITE):
            r = _sc(sb, nr, fd, where[c[2]], c[3], c[4])
        elif nr == LSEEK:
            r = _sc(sb, nr, fd, c[2], c[3], 0)
        elif nr == FSTAT:
            r = _sc(sb, nr, fd, where[c[2]], 0, 0)
            if r == 0:  # times and inode differ from run to run: compare mode and size
                mode, size = (struct.unpack_from("<I", sb.memory.read(where[c[2]] + 24, 4))[0],
                              struct.unpack_from("<q", sb.memory.read(where[c[2]] + 48, 8))[0])
                r = ("stat", mode, size)
                sb.memory.write(where[c[2]], bytes(144))
        elif nr == GETRANDOM:
            r = _sc(sb, nr, where[c[1]], c[2], 0, 0)
            if r > 0:  # random bytes differ: only how many
                sb.memory.write(where[c[1]], bytes(r))
        else:
            r = _sc(sb, nr, fd, where[c[2]], 0, 0)
            if r == 0:  # the time itself differs from run to run
                r = "ok"
                sb.memory.write(where[c[2]], bytes(16))
        results.append(r)
    results.append(sb.memory.read(buf, 8192))
    return results


@example(calls=[(WRITE, 3, "mid", IO_CHUNK + 5), (LSEEK, 3, 0, 1)])
@example(calls=[(READ, 3, "buf", IO_CHUNK + 5), (READ, 3, "end", 100), (READ, 4, "code", 10)])
@example(calls=[(WRITEV, 3, "buf", [("buf", 100), ("mid", IO_CHUNK)]), (LSEEK, 3, 0, 1),
                (READV, 4, "buf", [("end", 30), ("buf", 1 << 63)])])
@example(calls=[(PWRITE, 3, "buf", IO_CHUNK + 5, 3), (PREAD, 4, "end", 100, 0),
                (PREAD, 0, "buf", 1, 0), (PWRITE, 4, "buf", 1, 0)])
@example(calls=[(WRITE, 1, "buf", 4096), (WRITEV, 2, "buf", [("buf", 7), ("code", 9)]),
                (WRITE, 1, "top", 100), (WRITE, 1 << 32 | 1, "buf", 5)])
@example(calls=[(CLOCK, 8, "buf"), (CLOCK, 2, "top"), (CLOCK, 0, "null"), (CLOCK, 7, "mid")])
@example(calls=[(FSTAT, 3, "buf"), (FSTAT, 4, "top"), (FSTAT, 1, "buf"), (FSTAT, 63, "buf"),
                (GETRANDOM, "mid", IO_CHUNK + 5), (GETRANDOM, "top", 100),
                (GETRANDOM, "buf", 1 << 63)])
@example(calls=[(LSEEK, 3, -1, 0), (LSEEK, 0, 0, 0), (WRITE, 4, "buf", 10), (LSEEK, 4, 5, 7)])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(CALL, min_size=1, max_size=12))
def test_c_service_matches_python(image, tmp_path_factory, monkeypatch, calls):
    got = []
    for backend, direct in (("native", True), ("native", False), ("tme", False)):
        tmp = tmp_path_factory.mktemp("direct")
        results, content, _ = run_sequence(backend, image, tmp, calls, direct, monkeypatch)
        got.append((results, content, (tmp / "out").read_bytes()))
    assert got[0] == got[1], "C service != Python"
    assert got[1] == got[2], "native != tme"


def test_the_c_service_is_taken_and_cheap(image, tmp_path, monkeypatch):
    """Not a benchmark (bench/runtime_syscalls.py is): only that the C path is used at all,
    seen as a large gap on a loop of small writes to a file."""
    calls = [(WRITE, 3, "buf", 16)] * 3000
    times = {}
    for direct in (True, False):
        t = time.perf_counter()
        run_sequence("native", image, tmp_path / str(direct), calls, direct, monkeypatch)
        times[direct] = time.perf_counter() - t
    assert times[True] < times[False]


STDIN_CALL = st.one_of(
    st.tuples(st.just(READ), st.just(0), WHERE, SIZES),
    st.tuples(st.just(READV), st.just(0), WHERE, st.lists(st.tuples(WHERE, SIZES), max_size=4)),
    st.tuples(st.just(PREAD), st.just(0), WHERE, SIZES, st.sampled_from([0, 3])),
    st.tuples(st.just(LSEEK), st.just(0), st.sampled_from([0, 5]), st.sampled_from([0, 1])),
    st.tuples(st.just(FSTAT), st.just(0), WHERE),
)


@example(calls=[(READ, 0, "buf", 4096), (READ, 0, "top", 100), (FSTAT, 0, "buf"),
                (LSEEK, 0, 0, 0), (READV, 0, "buf", [("buf", 7), ("mid", 1 << 20)])])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(STDIN_CALL, min_size=1, max_size=8))
def test_the_hosts_fd0_as_a_file_read_in_c_matches_python(image, tmp_path_factory,
                                                            monkeypatch, calls):
    """`prog < file`: reads of fd 0 go straight to the file in C (they cannot wait), its
    fstat and lseek are still a stream's, on every path alike."""
    text = bytes(range(251)) * 9000  # 2.2 MB: more than a read takes at once
    got = []
    for backend, direct in (("native", True), ("native", False), ("tme", False)):
        tmp = tmp_path_factory.mktemp("stdin")
        results, _, _ = run_sequence(backend, image, tmp, calls, direct, monkeypatch,
                                     host_stdin=text)
        got.append(results)
    assert got[0] == got[1], "C service != Python"
    assert got[1] == got[2], "native != tme"


def test_the_hosts_fd0_is_read_in_c_only_while_it_is_a_regular_file(image, tmp_path):
    (tmp_path / "in").write_bytes(b"x")
    r, w = os.pipe()
    marks = {}
    for what, fd in (("file", os.open(tmp_path / "in", os.O_RDONLY)), ("pipe", r)):
        saved = os.dup(0)
        os.dup2(fd, 0)
        try:
            with tmebox.Runtime() as rt:
                sb = rt.spawn(rt.load(image), stdin=None)
                d = sb._engine._direct
                marks[what] = (d.nfds > 0 and d.fds[0].host, d.nfds > 0 and d.fds[0].readable)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
            os.close(fd)
    os.close(w)
    assert marks["file"] == (0, 1)
    assert marks["pipe"] in ((-1, 0), (False, False))


def test_descriptors_past_the_first_64_are_serviced_in_c_and_keep_the_others(image, tmp_path):
    """The C side's descriptor array grows (fd 200 here) with every earlier mark kept, new
    slots unmarked (Python's), and closing an fd unmarks it."""
    (tmp_path / "f").write_bytes(b"")
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image), dirs={"/d": (str(tmp_path), "rw")}, fd_limit=512)
        buf = _sc(sb, 9, 0, 8192, 3, 0x22)
        sb.memory.write(buf, b"/d/f\0")
        assert _sc(sb, OPENAT, -100, buf, 2, 0) == 3
        assert _sc(sb, DUP2, 3, 200, 0, 0) == 200
        fds = sb._engine._fds
        assert len(fds) > 200 and fds[200].host >= 0 and fds[3].host >= 0
        assert fds[1].host == 1 and fds[1].whole  # fd 1 is the host's, as before growing
        assert all(fds[i].host == -1 for i in (4, 63, 64, 199, 201, len(fds) - 1))
        sb.memory.write(buf + 64, b"one,two")
        assert _sc(sb, WRITE, 200, buf + 64, 4, 0) == 4 and _sc(sb, WRITE, 3, buf + 68, 3, 0) == 3
        assert (tmp_path / "f").read_bytes() == b"one,two"
        assert _sc(sb, 3, 200, 0, 0, 0) == 0  # close
        assert fds[200].host == -1 and _sc(sb, WRITE, 200, buf, 1, 0) == -1  # EBADF


def test_a_snapshot_spawn_marks_its_descriptors_when_first_called(image, tmp_path):
    """No C descriptor table until sandbox code first runs; then the streams' marks, and a
    file the guest opens, are the C service's, as for a spawn that ran start-up."""
    (tmp_path / "f").write_bytes(b"")
    with tmebox.Runtime() as rt:
        first = rt.spawn(rt.load(image), dirs={"/d": (str(tmp_path), "rw")})
        sb = rt.spawn(first.snapshot(), stdout=None, dirs={"/d": (str(tmp_path), "rw")})
        assert sb._engine._direct is None
        buf = _sc(sb, 9, 0, 8192, 3, 0x22)
        fds = sb._engine._fds
        assert fds[1].host == 1 and fds[2].host == 2 and fds[3].host == -1
        sb.memory.write(buf, b"/d/f\0x")
        assert _sc(sb, OPENAT, -100, buf, 2, 0) == 3 and fds[3].host >= 0
        assert _sc(sb, WRITE, 3, buf + 5, 1, 0) == 1
        assert (tmp_path / "f").read_bytes() == b"x"
