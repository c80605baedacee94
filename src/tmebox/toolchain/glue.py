"""Assembly the link step adds to every image: host-function stubs and the call thunk.

Both are ordinary sandbox code: they go through the rewriter like the user's code and the
verifier checks them in the finished image, so nothing here is trusted.

- A stub for host function k (an undefined function the guest declared with
  TMEBOX_IMPORT) stores the argument registers into a frame on its stack and makes
  runtime call SYS_TMEBOX_HOST + k with the frame's address in %rdi; the host reads the
  arguments from there and returns the result in %rax (a float result as its bits, which
  the stub moves to %xmm0).
- The call thunk (CALL_THUNK_SYMBOL) does the opposite for host -> guest calls that need
  %xmm registers: it loads the argument registers from a frame, calls the target, and
  stores %rax and %xmm0 back into the frame.
"""

from __future__ import annotations

from tmebox.trusted import abi
from tmebox.trusted.signature import FRAME_SIZE, FRAME_SSE, Signature, ValType

__all__ = ["glue_asm"]

_INT_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
# The stub's frame: FRAME_SIZE bytes plus 8, so that %rsp stays 16-byte aligned at the call.
_STUB_FRAME = FRAME_SIZE + 8


def _function(name: str, body: list[str]) -> list[str]:
    return ["\t.text", f"\t.globl {name}", f"\t.type {name},@function", "\t.p2align 5",
            f"{name}:", *body, f"\t.size {name}, .-{name}", ""]


def _stub(index: int, sig: Signature) -> list[str]:
    body = [f"\tsubq ${_STUB_FRAME}, %rsp"]
    ints = sum(not p.is_float for p in sig.params)
    floats = len(sig.params) - ints
    body += [f"\tmovq %{reg}, {8 * i}(%rsp)" for i, reg in enumerate(_INT_REGS[:ints])]
    body += [f"\tmovsd %xmm{i}, {FRAME_SSE + 8 * i}(%rsp)" for i in range(floats)]
    body += ["\tmovq %rsp, %rdi", f"\tmovl ${abi.SYS_TMEBOX_HOST + index:#x}, %eax",
             "\tsyscall"]
    if sig.result is ValType.F64:
        body.append("\tmovq %rax, %xmm0")
    elif sig.result is ValType.F32:
        body.append("\tmovd %eax, %xmm0")
    body += [f"\taddq ${_STUB_FRAME}, %rsp", "\tret"]
    return body


def _thunk() -> list[str]:
    # %rdi = frame, %rsi = target; %rbx (callee-saved) keeps the frame across the call.
    body = ["\tpushq %rbx", "\tmovq %rdi, %rbx", "\tmovq %rsi, %rax"]
    body += [f"\tmovsd {FRAME_SSE + 8 * i}(%rbx), %xmm{i}" for i in range(8)]
    body += [f"\tmovq {8 * i}(%rbx), %{reg}" for i, reg in enumerate(_INT_REGS)]
    body += ["\tcall *%rax", "\tmovq %rax, 0(%rbx)", f"\tmovsd %xmm0, {FRAME_SSE}(%rbx)",
             "\tpopq %rbx", "\tret"]
    return body


def glue_asm(imports: list[tuple[str, Signature]]) -> str:
    """The glue of an image whose host functions are `imports` (index = runtime call)."""
    lines: list[str] = []
    for index, (name, sig) in enumerate(imports):
        lines += _function(name, _stub(index, sig))
    lines += _function(abi.CALL_THUNK_SYMBOL, _thunk())
    lines.append('\t.section .note.GNU-stack,"",@progbits')
    return "\n".join(lines) + "\n"
