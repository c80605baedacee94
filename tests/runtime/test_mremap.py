"""mremap (runtime/syscalls.py, the specification; NativeMemory.move moves pages without a
copy): musl's realloc of large blocks uses it, and without it a buffer grown step by step
is copied whole at every step. Same results on both backends; what a move leaves behind
reads as zero; nothing outside the sandbox's own mappings can be moved or grown."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.runtime.native import engine

SRC = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <sys/syscall.h>
int64_t sc(int64_t nr, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
    int64_t r = syscall(nr, a, b, c, d, e);
    return r == -1 ? -errno : r;
}
/* a buffer grown by `step` bytes at a time up to n, its contents checked after each step */
int64_t grow(int64_t n, int64_t step) {
    unsigned char *p = NULL;
    int64_t have = 0;
    while (have < n) {
        unsigned char *q = realloc(p, have + step);
        if (!q) return -1;
        p = q;
        for (int64_t i = 0; i < have; i += 4093)
            if (p[i] != (unsigned char)(i * 7)) return -2 - i;
        for (int64_t i = have; i < have + step; i++) p[i] = (unsigned char)(i * 7);
        have += step;
    }
    int64_t sum = 0;
    for (int64_t i = 0; i < have; i++) sum += p[i];
    free(p);
    return sum;
}
int main(void) { return 0; }
"""
MMAP, MUNMAP, MREMAP = 9, 11, 25
PAGE = 4096
ANON = 0x22  # MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "mremap", SRC)


def _sc(sb, nr: int, *args: int) -> int:
    signed = [(a & (2**64 - 1)) - (2**64 if (a & (2**64 - 1)) >> 63 else 0) for a in args]
    return sb.call("sc", nr, *signed, *[0] * (5 - len(args)))


@pytest.mark.parametrize("backend", ["native", "tme"])
def test_realloc_growing_step_by_step_keeps_its_contents(image, backend) -> None:
    n, step = (6 << 20, 256 << 10) if backend == "native" else (1 << 20, 128 << 10)
    want = sum((i * 7) & 0xFF for i in range(n))
    with tmebox.Runtime(backend=backend) as rt:
        assert rt.spawn(rt.load(image)).call("grow", n, step) == want


@pytest.mark.parametrize("backend", ["native", "tme"])
def test_mremap_moves_grows_shrinks_and_leaves_zeros(image, backend) -> None:
    with tmebox.Runtime(backend=backend) as rt:
        sb = rt.spawn(rt.load(image))
        a = _sc(sb, MMAP, 0, 4 * PAGE, 3, ANON, -1)
        sb.memory.write(a, b"A" * (4 * PAGE))
        b = _sc(sb, MMAP, 0, PAGE, 3, ANON, -1)  # right below a, so a cannot grow down
        assert b == a - PAGE
        moved = _sc(sb, MREMAP, a, 4 * PAGE, 64 * PAGE, 1)  # MAYMOVE
        assert moved > 0
        if moved != a:
            assert sb.memory.read(a, 4 * PAGE) == bytes(4 * PAGE)  # nothing left behind
        assert sb.memory.read(moved, 4 * PAGE) == b"A" * (4 * PAGE)
        assert sb.memory.read(moved + 4 * PAGE, 60 * PAGE) == bytes(60 * PAGE)
        assert _sc(sb, MREMAP, moved, 64 * PAGE, 2 * PAGE, 0) == moved  # shrink in place
        assert _sc(sb, MMAP, moved + 2 * PAGE, PAGE, 3, ANON | 0x100000, -1) == \
            moved + 2 * PAGE  # the tail is free again (MAP_FIXED_NOREPLACE)
        # without MAYMOVE a block with a neighbour above cannot grow
        assert _sc(sb, MREMAP, moved, 2 * PAGE, 8 * PAGE, 0) == -12  # ENOMEM


@pytest.mark.parametrize("backend", ["native", "tme"])
def test_mremap_touches_only_the_sandboxs_own_mappings(image, backend) -> None:
    with tmebox.Runtime(backend=backend) as rt:
        sb = rt.spawn(rt.load(image))
        L = sb._layout
        code, stack = sb.base + L.code_lo, sb.base + L.rw_lo
        a = _sc(sb, MMAP, 0, 2 * PAGE, 3, ANON, -1)
        for args, err in [
            ((code, PAGE, 2 * PAGE, 1), -14),  # code: not a mapping (EFAULT)
            ((stack, PAGE, 2 * PAGE, 1), -14),  # stack and data: not a mapping
            ((a, 4 * PAGE, 8 * PAGE, 1), -14),  # more than is mapped there
            ((a + 1, PAGE, 2 * PAGE, 1), -22),  # not page aligned (EINVAL)
            ((a, 2 * PAGE, 4 * PAGE, 3, stack), -22),  # MREMAP_FIXED: no target of its own
            ((a, 2 * PAGE, 4 * PAGE, 5), -22),  # MREMAP_DONTUNMAP
            ((a, 0, 4 * PAGE, 1), -22),  # old size 0 (a shared mapping's duplicate)
            ((a, 2 * PAGE, 1 << 33, 1), -22),  # beyond the window
            ((a | 1 << 40, 2 * PAGE, (1 << 32) - PAGE, 1), -12),  # high bits ignored; ENOMEM
        ]:
            assert _sc(sb, MREMAP, *args) == err, args
        assert sb.memory.read(a, 8) == bytes(8)  # still there, unchanged


def test_page_moves_are_bounded_per_tenant_and_the_window_is_one_mapping_again(
        image) -> None:
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image))
        mem, base = sb._engine.memory, sb.base

        def mappings() -> int:
            return len([line for line in Path("/proc/self/maps").read_text().splitlines()
                        if base <= int(line.split("-")[0], 16) < base + (1 << 32)])

        fresh = mappings()
        a = _sc(sb, MMAP, 0, 2 * PAGE, 3, ANON, -1) - base
        b = _sc(sb, MMAP, 0, 2 * PAGE, 3, ANON, -1) - base
        for i in range(2 * engine.MAX_MOVES):  # back and forth, the pages moved or copied
            src, dst = (a, b) if i % 2 == 0 else (b, a)
            mem.write(base + src, i.to_bytes(4, "little") * (2 * PAGE // 4))
            mem.move(src, dst, 2 * PAGE)
            assert mem.read(base + dst, 2 * PAGE) == i.to_bytes(4, "little") * (2 * PAGE // 4)
            assert mem.read(base + src, 2 * PAGE) == bytes(2 * PAGE)
        assert mem.moves == engine.MAX_MOVES
        assert mappings() > fresh  # the moves split the window's mapping
        sb.destroy()
        assert mappings() == fresh  # one again for the next tenant
