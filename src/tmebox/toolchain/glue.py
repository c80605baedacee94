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
- cpuid as the image's CPU level shows it (CPUID_SYMBOL; the rewriter turns every `cpuid`
  into a call to it): the real cpuid with the feature bits cleared that the level lacks
  or that the verifier refuses at every level (AVX-512, AES, SHA, TSX, FSGSBASE...), so
  that code dispatching on cpuid picks what the verifier let in. A whitelist: bits not
  named here read as 0. It changes the flags, which gcc assumes of every asm statement.
"""

from __future__ import annotations

from tmebox.trusted import abi
from tmebox.trusted.image import CpuLevel
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


def _bits(*bits: int) -> int:
    return sum(1 << b for b in bits)


_ALL = 0xFFFFFFFF
# (leaf, subleaf or None for any) -> the bits kept in eax, ebx, ecx, edx, from each level up.
_CPUID_KEEP: dict[tuple[int, int | None], dict[CpuLevel, tuple[int, int, int, int]]] = {
    (1, None): {
        # ecx: rdrand 30, hypervisor 31 | v2: sse3 0, ssse3 9, cx16 13, sse4.1 19, sse4.2 20,
        # popcnt 23 | v3: fma 12, movbe 22, xsave 26, osxsave 27, avx 28, f16c 29.
        CpuLevel.X86_64: (_ALL, _ALL, _bits(30, 31), _ALL),
        CpuLevel.V2: (_ALL, _ALL, _bits(0, 9, 13, 19, 20, 23), 0),
        CpuLevel.V3: (0, 0, _bits(12, 22, 26, 27, 28, 29), 0),
    },
    (7, 0): {
        # ebx: erms 9, rdseed 18, clflushopt 23 | v3: bmi1 3, avx2 5, bmi2 8; edx: fsrm 4.
        CpuLevel.X86_64: (_ALL, _bits(9, 18, 23), 0, _bits(4)),
        CpuLevel.V3: (0, _bits(3, 5, 8), 0, 0),
    },
    (7, None): {CpuLevel.X86_64: (0, 0, 0, 0)},  # subleaf 1 and up: AVX-VNNI, AMX...
    # XCR0's supported state components: x87 and SSE | v3: AVX.
    (0xD, 0): {CpuLevel.X86_64: (_bits(0, 1), _ALL, _ALL, 0), CpuLevel.V3: (_bits(2), 0, 0, 0)},
    (0xD, 2): {CpuLevel.V3: (_ALL, _ALL, _ALL, _ALL)},  # the AVX state's size and place
    (0xD, None): {CpuLevel.X86_64: (0, 0, 0, 0)},
    # ecx: prefetchw 8 | v2: lahf_lm 0 | v3: lzcnt 5; edx without 3DNow!.
    (0x80000001, None): {CpuLevel.X86_64: (_ALL, _ALL, _bits(8), 0x3FFFFFFF),
                         CpuLevel.V2: (0, 0, _bits(0), 0), CpuLevel.V3: (0, 0, _bits(5), 0)},
}


def cpuid_masks(level: CpuLevel) -> dict[tuple[int, int | None], tuple[int, int, int, int]]:
    """What __tmebox_cpuid keeps of each masked leaf at `level` (other leaves: all)."""
    out = {}
    for leaf, by_level in _CPUID_KEEP.items():
        keep = [0, 0, 0, 0]
        for lv, bits in by_level.items():
            if lv.rank <= level.rank:
                keep = [k | b for k, b in zip(keep, bits, strict=True)]
        out[leaf] = (keep[0], keep[1], keep[2], keep[3])
    return out


def _cpuid(level: CpuLevel) -> list[str]:
    # %esi = leaf, %edi = subleaf, both saved; the leaf tests run most specific first.
    body = ["\tpushq %rsi", "\tpushq %rdi", "\tmovl %eax, %esi", "\tmovl %ecx, %edi",
            "\t.byte 0x0f, 0xa2  # cpuid itself: written as `cpuid`, it would call this"]
    for n, ((leaf, sub), keep) in enumerate(cpuid_masks(level).items()):
        body += [f"\tcmpl ${leaf:#x}, %esi", f"\tjne .Ltmebox_cpuid_{n}"]
        if sub is not None:
            body += [f"\tcmpl ${sub}, %edi", f"\tjne .Ltmebox_cpuid_{n}"]
        body += [f"\tandl ${mask:#x}, %{reg}" for mask, reg in
                 zip(keep, ("eax", "ebx", "ecx", "edx"), strict=True) if mask != _ALL]
        body += ["\tjmp .Ltmebox_cpuid_done", f".Ltmebox_cpuid_{n}:"]
    body += [".Ltmebox_cpuid_done:", "\tpopq %rdi", "\tpopq %rsi", "\tret"]
    return body


def glue_asm(imports: list[tuple[str, Signature]], level: CpuLevel = CpuLevel.X86_64) -> str:
    """The glue of an image whose host functions are `imports` (index = runtime call) and
    whose CPU level is `level`."""
    lines: list[str] = []
    for index, (name, sig) in enumerate(imports):
        lines += _function(name, _stub(index, sig))
    lines += _function(abi.CALL_THUNK_SYMBOL, _thunk())
    lines += _function(abi.CPUID_SYMBOL, _cpuid(level))
    lines.append('\t.section .note.GNU-stack,"",@progbits')
    return "\n".join(lines) + "\n"
