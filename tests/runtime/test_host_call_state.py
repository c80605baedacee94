"""The CPU state across a host function (docs/runtime.md, "Native backend"): the vector
registers the host left are never the guest's to read, the guest's own control words
(MXCSR, x87) come back, and an ordinary runtime call keeps every vector register."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import pytest
from asm_image import machine_code
from c_image import build_c

import tmebox
from tmebox.runtime.host import CHostFunction

SRC = r"""
#include <stdint.h>
#include <tmebox.h>
TMEBOX_IMPORT int64_t host_scribble(int64_t a);

static uint64_t vectors(void) {          /* OR of all 16 %xmm registers, both halves */
    uint64_t acc = 0, v[2];
#define RD(n) __asm__ volatile("movdqu %%xmm" #n ", %0" : "=m"(v)); acc |= v[0] | v[1];
    RD(0) RD(1) RD(2) RD(3) RD(4) RD(5) RD(6) RD(7)
    RD(8) RD(9) RD(10) RD(11) RD(12) RD(13) RD(14) RD(15)
    return acc;
}
int64_t vectors_after_host(int64_t a) {
    host_scribble(a);
    return (int64_t)vectors();
}
int64_t controls_after_host(int64_t a) {
    uint32_t mx = 0x3f80, mx2;             /* round down, all exceptions masked */
    uint16_t cw = 0x027f, cw2;             /* x87: double precision */
    __asm__ volatile("ldmxcsr %0" :: "m"(mx));
    __asm__ volatile("fldcw %0" :: "m"(cw));
    host_scribble(a);
    __asm__ volatile("stmxcsr %0" : "=m"(mx2));
    __asm__ volatile("fnstcw %0" : "=m"(cw2));
    mx = 0x1f80; cw = 0x037f;
    __asm__ volatile("ldmxcsr %0" :: "m"(mx));
    __asm__ volatile("fldcw %0" :: "m"(cw));
    return ((int64_t)mx2 << 16) | cw2;
}
int64_t vectors_kept_across_getpid(void) { /* a plain runtime call keeps them all */
    uint64_t v[2];
    __asm__ volatile("pcmpeqd %%xmm7, %%xmm7\n\t"
                     "movl $39, %%eax\n\t"
                     "syscall\n\t"
                     "movdqu %%xmm7, %0"
                     : "=m"(v) :: "rax", "rcx", "r11", "xmm7", "memory");
    return (int64_t)(v[0] & v[1]);
}
int main(void) { return 0; }
"""
# A C host function that leaves the host's mark everywhere the guest could look: every
# %xmm all ones, x87 data registers holding 1.0, and its own MXCSR and x87 control word
# (which it puts back on return, as any C function must).
SCRIBBLE = """
    pcmpeqd %xmm0, %xmm0
    pcmpeqd %xmm1, %xmm1
    pcmpeqd %xmm2, %xmm2
    pcmpeqd %xmm3, %xmm3
    pcmpeqd %xmm4, %xmm4
    pcmpeqd %xmm5, %xmm5
    pcmpeqd %xmm6, %xmm6
    pcmpeqd %xmm7, %xmm7
    pcmpeqd %xmm8, %xmm8
    pcmpeqd %xmm9, %xmm9
    pcmpeqd %xmm10, %xmm10
    pcmpeqd %xmm11, %xmm11
    pcmpeqd %xmm12, %xmm12
    pcmpeqd %xmm13, %xmm13
    pcmpeqd %xmm14, %xmm14
    pcmpeqd %xmm15, %xmm15
    fld1
    fld1
    fstp %st(0)
    fstp %st(0)
    movq %rsi, %rax
    ret
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "hoststate", SRC)


@pytest.fixture(scope="module")
def scribble():
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(machine_code(SCRIBBLE))
    yield CHostFunction(ctypes.addressof(ctypes.c_char.from_buffer(page)))


def python_scribble(caller, a):
    return a


@pytest.mark.parametrize("host", ["c", "python"])
@pytest.mark.parametrize("warm", [False, True], ids=["python-path", "c-path"])
def test_no_host_vector_state_reaches_the_guest(image, scribble, host, warm):
    with tmebox.Runtime() as rt:
        rt.define("host_scribble", scribble if host == "c" else python_scribble)
        sb = rt.spawn(rt.load(image))
        if warm:
            for name in ("vectors_after_host", "controls_after_host"):
                sb._lookup(name)
        assert sb.call("vectors_after_host", 5) == 0
        assert sb.call("controls_after_host", 5) == (0x3F80 << 16) | 0x027F


def test_an_ordinary_runtime_call_keeps_the_vector_registers(image, scribble):
    with tmebox.Runtime() as rt:
        rt.define("host_scribble", scribble)
        sb = rt.spawn(rt.load(image))
        assert sb.call("vectors_kept_across_getpid") == -1  # all ones, both halves
