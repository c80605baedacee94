"""x86-64-v3 code owns all 256 bits of %ymm0-15: a runtime call (whose convention keeps
vector registers) and a preemption by the service tick give them back whole. FXSAVE
alone keeps only the low 128 bits."""

from __future__ import annotations

from pathlib import Path

import pytest
from asm_image import assemble

AVX2 = " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
pytestmark = pytest.mark.skipif(not AVX2, reason="this CPU has no AVX2")

BODY = r"""
    .globl main
main:
    xorl %eax, %eax
    ret

    .p2align 5
    .globl ymm_across_call  # every upper half set from %rdi, one runtime call, their sum
ymm_across_call:
    vmovq %rdi, %xmm0
    vpunpcklqdq %xmm0, %xmm0, %xmm0
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vinsertf128 $1, %xmm0, %ymm\n, %ymm\n
    .endr
    movl $39, %eax
    rtcall
    xorl %eax, %eax
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vextractf128 $1, %ymm\n, %xmm\n
    vmovq %xmm\n, %rdx
    addq %rdx, %rax
    .endr
    vzeroupper
    ret

    .p2align 5
    .globl ymm_count        # count to %rdi in the upper half of %ymm9 only
ymm_count:
    vpxor %xmm8, %xmm8, %xmm8
    movl $1, %eax
    vmovq %rax, %xmm1
    vinsertf128 $1, %xmm1, %ymm8, %ymm9
    vpxor %xmm8, %xmm8, %xmm8
1:  vpaddq %ymm9, %ymm8, %ymm8
    decq %rdi
    jne 1b
    vextractf128 $1, %ymm8, %xmm0
    vmovq %xmm0, %rax
    vzeroupper
    ret
"""


@pytest.fixture
def img(rt):
    return rt.load_unverified(assemble(BODY))


def test_upper_halves_survive_a_runtime_call(rt, img) -> None:
    sb = rt.spawn(img)
    assert sb.call("ymm_across_call", 0x0123_4567_89AB) == 16 * 0x0123_4567_89AB


def test_upper_halves_survive_preemption(rt, img) -> None:
    sb = rt.spawn(img)
    for _ in range(200):  # short calls: the next one holds the GIL and may be preempted
        assert sb.call("ymm_count", 3) == 3
    preempted = sb.call.preemptions
    n = 400_000_000
    assert sb.call("ymm_count", n) == n
    assert sb.call.preemptions > preempted, "the long call was never preempted"
