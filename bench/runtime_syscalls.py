"""Cost of the common runtime calls in a sandbox against the same system calls made
natively, in the same rounds: each serviced in C (runtime/native/tmebox_calls.c), each
through Python (the C service switched off), and a native loop (a C function compiled here
with gcc, calling libc). Per call, medians of interleaved rounds; the issue's target is the
C service at most 1 µs above native.

Calls: write and read of 1 KiB on a file, writev of 4 x 256 bytes, lseek, clock_gettime
(natively through the vDSO, as a program makes it; in a sandbox it is a runtime call, and
serviced in C in both sandbox columns: it takes no descriptor).

Usage: bench/runtime_syscalls.py [--rounds N] [--iters N] [--json OUT]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tmebox
from tmebox.runtime import files
from tmebox.trusted import cache

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

LOOP_C = r"""
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
static char buf[4096];
int64_t loop(int64_t what, int64_t fd, int64_t n) {
    struct iovec v[4] = {{buf, 256}, {buf + 256, 256}, {buf + 512, 256}, {buf + 768, 256}};
    struct timespec ts;
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) {
        switch (what) {
        case 0: s += pwrite(fd, buf, 1024, 0); break;
        case 1: s += pread(fd, buf, 1024, 0); break;
        case 2: s += write(fd, buf, 1024); lseek(fd, 0, SEEK_SET); break;
        case 3: s += read(fd, buf, 1024); lseek(fd, 0, SEEK_SET); break;
        case 4: s += writev(fd, v, 4); lseek(fd, 0, SEEK_SET); break;
        case 5: s += lseek(fd, 0, SEEK_SET); break;
        case 6: s += clock_gettime(CLOCK_MONOTONIC, &ts); break;
        }
    }
    return s;
}
"""
GUEST_C = LOOP_C + r"""
#include <fcntl.h>
int64_t open_rw(const char *path) { return open(path, O_RDWR); }
int main(void) { return 0; }
"""
CALLS = ["pwrite 1 KiB", "pread 1 KiB", "write 1 KiB + lseek", "read 1 KiB + lseek",
         "writev 4x256 + lseek", "lseek", "clock_gettime"]


def native_loop() -> ctypes.CDLL:
    folder = cache.root() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    src, lib = folder / "syscall_loop.c", folder / "syscall_loop.so"
    if not lib.exists() or not src.exists() or src.read_text() != LOOP_C:
        src.write_text(LOOP_C)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.loop.restype = ctypes.c_int64
    dll.loop.argtypes = [ctypes.c_int64] * 3
    return dll


def per_call(fn, iters: int) -> float:
    t = time.perf_counter()
    fn(iters)
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args()
    dll = native_loop()
    with tempfile.TemporaryDirectory() as d, tmebox.Runtime(max_sandboxes=4) as rt:
        Path(d, "f").write_bytes(bytes(4096))
        img = rt.load(tenant_image(GUEST_C, "runtime_syscalls"))
        fast = rt.spawn(img, dirs={"/d": (d, "rw")})
        real = files.FileTable.watch_with
        files.FileTable.watch_with = lambda self, watch: None  # type: ignore[method-assign]
        try:
            slow = rt.spawn(img, dirs={"/d": (d, "rw")})
        finally:
            files.FileTable.watch_with = real  # type: ignore[method-assign]
        fds = {}
        for name, sb in (("c", fast), ("python", slow)):
            p = sb.alloc(4096)
            sb.memory.write(p, b"/d/f\0")
            fds[name] = sb.call("open_rw", p)
            assert fds[name] >= 3, fds[name]
        host_fd = os.open(Path(d, "f"), os.O_RDWR)
        rows: dict[str, dict[str, list[float]]] = {c: {"c": [], "python": [], "native": []}
                                                   for c in CALLS}
        for _ in range(a.rounds):
            for i, call in enumerate(CALLS):
                rows[call]["native"].append(per_call(
                    lambda n, i=i: dll.loop(i, host_fd, n), a.iters))
                rows[call]["c"].append(per_call(
                    lambda n, i=i: fast.call("loop", i, fds["c"], n), a.iters))
                rows[call]["python"].append(per_call(
                    lambda n, i=i: slow.call("loop", i, fds["python"], n), a.iters // 10))
        os.close(host_fd)
    result = {}
    print(f"per call, medians of {a.rounds} interleaved rounds (ns)")
    print(f"  {'call':24} {'native':>8} {'C service':>10} {'Python':>9} {'C - native':>11}")
    for call, r in rows.items():
        m = {k: statistics.median(v) * 1e9 for k, v in r.items()}
        result[call] = m
        print(f"  {call:24} {m['native']:8.0f} {m['c']:10.0f} {m['python']:9.0f} "
              f"{m['c'] - m['native']:11.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rounds": a.rounds, "ns": result}, indent=2))


if __name__ == "__main__":
    main()
