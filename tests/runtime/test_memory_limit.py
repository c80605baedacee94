"""memory_limit bounds what a sandbox can touch, not only what brk and mmap report
(docs/runtime.md, "Limits"): pages beyond the break and the mappings are inaccessible to
the sandbox and to the host, and nothing the guest does with them reaches the host."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.errors import SandboxFault, TmeboxError

SRC = r"""
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static char *heap_top(void) { return (char *)sbrk(0); }
long store_above_break(long mib) {           /* plain stores, no brk, no mmap */
    char *p = heap_top() + (1 << 20);
    for (long i = 0; i < mib << 20; i += 4096) p[i] = 1;
    return 0;
}
long write_from_gap(void) {                  /* the host must not read it */
    long r = write(1, heap_top() + (8 << 20), 16);
    return r < 0 ? -errno : r;
}
long grow_and_use(long kib) {                /* legitimate memory still works */
    char *p = malloc(kib << 10);
    if (!p) return -1;
    for (long i = 0; i < kib << 10; i += 4096) p[i] = 1;
    free(p);
    char *q = malloc(kib << 10);
    long ok = q ? q[0] == 0 || q[0] == 1 : -2;
    free(q);
    return ok;
}
long reuse_unmapped(void) {                  /* munmap, then touch: a fault, not zeros */
    char *p = mmap(0, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p[0] = 1;
    munmap(p, 1 << 16);
    return *(volatile char *)p;
}
int main(void) { return 0; }
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "memlimit", SRC)


def test_stores_above_the_break_fault(image):
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image), memory_limit=4 << 20)
        with pytest.raises(SandboxFault, match="segv"):
            sb.call("store_above_break", 64)
        free = rt.spawn(rt.load(image))  # no limit: the whole window is usable
        assert free.call("store_above_break", 2) == 0


def test_the_host_never_reads_an_inaccessible_page(image):
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image), memory_limit=4 << 20, stdout=bytearray())
        assert sb.call("write_from_gap") == -14  # EFAULT, and the host is still here
        gap = sb.base + sb._proc.brk + (8 << 20)
        with pytest.raises(tmebox.errors.SandboxError, match="outside"):
            sb.memory.read(gap, 8)


def test_memory_inside_the_limit_works_and_comes_back(image):
    with tmebox.Runtime() as rt:
        img = rt.load(image)
        sb = rt.spawn(img, memory_limit=4 << 20)
        for _ in range(3):
            assert sb.call("grow_and_use", 2048) == 1
        with pytest.raises(SandboxFault):
            sb.call("reuse_unmapped")
        sb.destroy()
        # the window goes to the next tenant whole again
        nxt = rt.spawn(img)
        assert nxt.call("store_above_break", 2) == 0


def test_c_host_functions_and_memory_limit_do_not_mix(tmp_path_factory, sandbox_libc):
    src = r"""
    #include <tmebox.h>
    TMEBOX_IMPORT int64_t host_f(int64_t a);
    int64_t f(int64_t a) { return host_f(a); }
    int main(void) { return 0; }
    """
    img = build_c(tmp_path_factory, "chost", src)
    with tmebox.Runtime() as rt:
        rt.define("host_f", tmebox.CHostFunction(0x1000))
        loaded = rt.load(img)
        with pytest.raises(TmeboxError, match="CHostFunction"):
            rt.spawn(loaded, memory_limit=1 << 20)
