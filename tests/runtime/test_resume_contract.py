"""One resume contract for both backends (runtime/backend.py, Engine.resume): after a runtime
call the guest sees %rax = the result, %rcx = 0, %r11 = the address it resumed at, and every
other register as it left it. Hand-written guest code (not verified: it reads the registers a
real program would not)."""

from __future__ import annotations

import pytest
from asm_image import assemble

import tmebox

PROGRAM = r"""
    .globl main
main:
    ret

    .globl rcx_after            # %rcx after getpid()
rcx_after:
    movq $-1, %rcx
    movl $39, %eax
    rtcall
    movq %rcx, %rax
    ret

    .globl r11_after            # %r11 after getpid() minus where it resumed: 0
r11_after:
    movq $-1, %r11
    movl $39, %eax
    rtcall
here:
    leaq here(%rip), %rax
    subq %r11, %rax
    ret

    .globl result               # %rax after getpid()
result:
    movl $39, %eax
    rtcall
    ret

    .globl kept                 # the callee-saved registers and %rdx survive a runtime call
kept:
    pushq %rbx
    pushq %r12
    movabsq $0x1122334455667788, %rbx
    movq %rbx, %r12
    movq %rbx, %rdx
    movl $39, %eax
    rtcall
    xorq %rbx, %r12
    xorq %rdx, %rbx
    movq %r12, %rax
    orq %rbx, %rax
    popq %r12
    popq %rbx
    ret
"""


@pytest.fixture(scope="module")
def plan():
    return assemble(PROGRAM, name="resume")


@pytest.fixture(params=["native", "tme"])
def sandbox(request, plan):
    options = {"pool_size": 64 << 20, "heap_size": 1 << 20} if request.param == "tme" else {}
    with tmebox.Runtime(backend=request.param, max_sandboxes=2, **options) as rt:
        yield rt.spawn(rt.load_unverified(plan))


def test_rcx_is_zero_after_a_runtime_call(sandbox) -> None:
    assert sandbox.call("rcx_after") == 0


def test_r11_is_the_resume_address(sandbox) -> None:
    assert sandbox.call("r11_after") == 0


def test_rax_is_the_result(sandbox) -> None:
    assert sandbox.call("result") == 1  # getpid() in a sandbox


def test_other_registers_are_kept(sandbox) -> None:
    assert sandbox.call("kept") == 0
