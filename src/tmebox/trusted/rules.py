"""The per-instruction rules: one function each, its reason in its docstring.

`classify(raw, mode)` runs every rule on one instruction; none is skipped because another
found a group role. A rule either raises `Reject` or returns what the positional checks in
scan.py need (a group role, a branch or %rip-relative target). The result depends only on the
instruction's bytes and the mode, so scan.py caches it by bytes.

Sizes and forms come from the decoder (iced-x86 `Code`, operand kinds, `UsedMemory`); the raw
bytes are read only to hold the prefixes to the one canonical form GNU as emits.
"""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86 as ix

from tmebox.trusted import abi
from tmebox.trusted.groups import (
    ESP_WRITE_FORMS,
    Role,
    is_lea_r14,
    member_role,
    writes_all_of_esp,
)
from tmebox.trusted.image import CpuLevel, Isolation

__all__ = ["RULES", "Kind", "Reject", "classify"]

# One line per rule; docs/verifier.md has the table with a rejected example for each, and the
# rewriter's sections carry the same names.
RULES = {
    "decodes": "every byte decodes, the same for capstone, iced-x86 and AMD's decoding rules",
    "prefixes": "legacy prefixes only in GNU as's canonical order, each once, none after REX",
    "allowed-instruction": "only unprivileged computation: integer, x87, MMX, SSE-SSE4.2, "
                           "AVX2, FMA, F16C, BMI1/2; no VSIB, no EVEX",
    "cpu-level": "extensions only up to the image's CPU level (x86-64, -v2, -v3)",
    "runtime-call": "no syscall/int; direct branches into the runtime page only at its entries",
    "segment-register": "segment registers are never written (a selector load resets gs)",
    "fs-segment": "%fs is the host's thread pointer: no %fs access",
    "memory-operand": "memory access only as %gs with 32-bit addressing, or %rip-relative",
    "rip-target": "%rip-relative operands address the image",
    "string-instruction": "string instructions run on %rdi/%rsi confined just before",
    "base-register": "%r14 holds the window base and is never written",
    "stack-pointer": "%rsp only moves by push/pop/call/ret, and rsp,-imm, or 32-bit write + lea",
    "direct-branch-target": "direct branches land on a checked instruction start",
    "entry-point": "the entry and every export are checked instruction starts",
    "bundle": "code+data: no instruction or group crosses a 32-byte bundle boundary",
    "indirect-branch": "code+data: indirect branches only as and/or-masked jmp/call *%r11",
    "return": "code+data: ret only right after and/or-masking %r11 and pushing it",
}


class Reject(Exception):
    """A rule is broken; `address`/`length` name the instruction when there is one."""

    def __init__(self, rule: str, reason: str, address: int | None = None,
                 length: int = 0) -> None:
        assert rule in RULES, rule
        super().__init__(f"{rule}: {reason}")
        self.rule, self.reason, self.address, self.length = rule, reason, address, length


@dataclass(frozen=True, slots=True)
class Kind:
    """What the verifier knows about an instruction from its bytes alone."""

    rule: str = ""  # non-empty: the instruction breaks this rule wherever it is
    reason: str = ""
    role: Role = Role.PLAIN
    direct: bool = False  # direct branch: its target is checked
    rip: bool = False  # %rip-relative memory operand: its target is checked
    disp: int = 0  # direct or rip: target = address of the next instruction + disp


PLAIN = Kind()  # the common case: nothing to check beyond the bytes

C, R, M = ix.Code, ix.Register, ix.Mnemonic


def _mnemonics(names: str) -> frozenset[int]:
    return frozenset(getattr(M, n) for n in names.split())


def _codes(names: str) -> frozenset[int]:
    return frozenset(getattr(C, n) for n in names.split())


_CC = "A AE B BE E G GE L LE NE NO NP NS O P S"
# General-purpose instructions gcc and musl emit, and their harmless relatives. Not here, on
# purpose: far/interrupt control flow, I/O, descriptor tables, enter/leave, popf (sets TF/AC,
# which would leak into the host), xlat, bound, segment loads, TSX, xsave/xrstor (can load PKRU),
# wr/rd{fs,gs}base, {rd,wr}pkru, monitor/mwait, hlt, cli/sti, movdir64b/enqcmd.
ALLOWED_MNEMONICS = _mnemonics(
    "WAIT ADC ADD AND BSF BSR BSWAP BT BTC BTR BTS CALL CBW CDQ CDQE CLC CLD CMC CMP CMPXCHG "
    "CMPXCHG8B CMPXCHG16B CPUID CQO CWD CWDE DEC DIV IDIV IMUL INC JMP JRCXZ LAHF LEA "
    "LOOP LOOPE LOOPNE MOV MOVBE MOVNTI MOVSX MOVSXD MOVZX MUL NEG NOP NOT OR PAUSE POP PUSH "
    "PUSHFQ RCL RCR RET ROL ROR SAHF SAL SAR SBB SHL SHLD SHR SHRD STC STD SUB TEST XGETBV "
    "XADD XCHG XOR POPCNT LZCNT TZCNT CRC32 ENDBR64 INT3 UD2 LFENCE MFENCE SFENCE RDTSC RDTSCP "
    "RDRAND RDSEED PREFETCHNTA PREFETCHT0 PREFETCHT1 PREFETCHT2 PREFETCHW CLFLUSH CLFLUSHOPT "
    "MOVSB MOVSW MOVSD MOVSQ STOSB STOSW STOSD STOSQ LODSB LODSW LODSD LODSQ CMPSB CMPSW "
    "CMPSD CMPSQ SCASB SCASW SCASD SCASQ "
    + " ".join(f"J{c} CMOV{c} SET{c}" for c in _CC.split())
)
# x87, MMX and SSE..SSE4.2 only compute on their registers and explicit memory operands
# (which the memory rule checks): allowed by CPUID feature, minus the two with an implicit
# %ds:%rdi destination. (CMOV: fcmov/fcomi list it next to FPU.)
SIMD_FEATURES = frozenset(getattr(ix.CpuidFeature, n) for n in (
    "FPU", "FPU287", "FPU387", "MMX", "SSE", "SSE2", "SSE3", "SSSE3", "SSE4_1", "SSE4_2", "CMOV"))
SIMD_DENIED = _mnemonics("MASKMOVQ MASKMOVDQU VMASKMOVDQU")
# VEX encodings: AVX/AVX2 and the x86-64-v3 integer extensions compute on registers and
# explicit memory operands as their legacy counterparts do. Not here: AVX-512 (EVEX; also the
# VEX-encoded opmask instructions, which cpuid lists as AVX512F), AVX-VNNI, VAES, VPCLMULQDQ.
VEX_FEATURES = frozenset(getattr(ix.CpuidFeature, n) for n in (
    "AVX", "AVX2", "FMA", "F16C", "BMI1", "BMI2"))
# The lowest level whose CPUs have each feature that not every x86-64 CPU has; anything else
# allowed (rdrand, rdtscp, clflushopt...) is allowed at every level, as before levels.
# XSAVE stands for xgetbv alone: no other instruction of that feature is allowed.
LEVEL_OF_FEATURE = {
    **{getattr(ix.CpuidFeature, n): CpuLevel.V2 for n in (
        "SSE3", "SSSE3", "SSE4_1", "SSE4_2", "POPCNT", "CMPXCHG16B")},
    **{getattr(ix.CpuidFeature, n): CpuLevel.V3 for n in (
        "AVX", "AVX2", "BMI1", "BMI2", "F16C", "FMA", "LZCNT", "MOVBE", "XSAVE")},
}
# iced names no CPUID feature for these, which 64-bit mode has only from v2 on (LAHF_LM).
LEVEL_OF_MNEMONIC = {M.LAHF: CpuLevel.V2, M.SAHF: CpuLevel.V2}
# Every control transfer, by exact form: 64-bit operand size only (AMD honours 0x66 on near
# branches: a 16-bit jmp lands at ip & 0xffff), no far, no 32-bit-address loop/jecxz.
BRANCH_FORMS = _codes(
    "JMP_REL8_64 JMP_REL32_64 CALL_REL32_64 JMP_RM64 CALL_RM64 RETNQ JRCXZ_REL8_64 "
    "LOOP_REL8_64_RCX LOOPE_REL8_64_RCX LOOPNE_REL8_64_RCX "
    + " ".join(f"J{c}_REL8_64 J{c}_REL32_64" for c in _CC.split()))
# Instructions that move %rsp by their own operand size through memory the guards bound.
STACK_FORMS = _codes("PUSH_R64 PUSH_RM64 PUSHQ_IMM8 PUSHQ_IMM32 PUSHFQ POP_R64 POP_RM64 "
                     "CALL_REL32_64 CALL_RM64 RETNQ")
_POPS = _codes("POP_R64 POP_RM64")
_AND64_IMM = _codes("AND_RM64_IMM8 AND_RM64_IMM32")
_SYSTEM_CALLS = _mnemonics("SYSCALL SYSENTER INT INT1 INTO")
# Where each legacy prefix may stand (GNU as emits segment, address size, operand size, then
# lock/rep, then REX); the one exception is the assembler's padding nops, `66* 2e 0f 1f ...`.
_PREFIX_SLOT = {0x65: 0, 0x67: 1, 0x66: 2, 0xF0: 3, 0xF2: 3, 0xF3: 3}
_LEGACY_PREFIXES = frozenset(b"\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65\x66\x67")
_NOPS = frozenset((M.NOP,))
_NO_ACCESS = frozenset((M.NOP, M.LEA))  # memory operand syntax, no memory access
# bt/bts/btr/btc with a register bit offset touch operand + (offset >> 3): a signed 64-bit
# reach the decoder does not report. Only 32-bit addressing wraps that sum inside the window.
_BIT_OFFSET_FORMS = _codes(" ".join(f"{m}_RM{n}_R{n}" for m in ("BT", "BTS", "BTR", "BTC")
                                    for n in (16, 32, 64)))
_GPR32 = frozenset((R.EAX, R.ECX, R.EDX, R.EBX, R.ESP, R.EBP, R.ESI, R.EDI, R.R8D, R.R9D,
                    R.R10D, R.R11D, R.R12D, R.R13D, R.R14D, R.R15D))
_WRITES = frozenset((ix.OpAccess.WRITE, ix.OpAccess.COND_WRITE, ix.OpAccess.READ_WRITE,
                     ix.OpAccess.READ_COND_WRITE))
_RSP_FAMILY = frozenset((R.RSP, R.ESP, R.SP, R.SPL))
_R14_FAMILY = frozenset((R.R14, R.R14D, R.R14W, R.R14L))
_SEGMENT_REGISTERS = frozenset((R.ES, R.CS, R.SS, R.DS, R.FS, R.GS))
_STRING_MEMORY = {ix.OpKind.MEMORY_SEG_RSI: R.RSI, ix.OpKind.MEMORY_ESRDI: R.RDI}
_INFO = ix.InstructionInfoFactory()


@dataclass(slots=True)
class Insn:
    """One decoded instruction and the facts several rules need, computed once."""

    ins: ix.Instruction
    raw: bytes
    mode: str
    level: CpuLevel
    prefixes: bytes  # the legacy prefix bytes before the REX/opcode
    rex_then_prefix: bool  # a legacy prefix or second REX after a REX byte
    written: frozenset[int]  # registers (any width) written, implicitly or explicitly
    memory: tuple[ix.UsedMemory, ...]  # accesses (lea and nop have none)

    @classmethod
    def of(cls, ins: ix.Instruction, raw: bytes, mode: str,
           level: CpuLevel = CpuLevel.X86_64) -> Insn:
        info = _INFO.info(ins)
        i = 0
        while i < len(raw) and raw[i] in _LEGACY_PREFIXES:
            i += 1
        after = raw[i + 1] if i + 1 < len(raw) else None
        rex_then_prefix = (i < len(raw) and 0x40 <= raw[i] <= 0x4F and after is not None
                           and (after in _LEGACY_PREFIXES or 0x40 <= after <= 0x4F))
        written = frozenset(u.register for u in info.used_registers() if u.access in _WRITES)
        memory = tuple(m for m in info.used_memory() if m.access != ix.OpAccess.NO_MEM_ACCESS)
        return cls(ins, raw, mode, level, raw[:i], rex_then_prefix, written, memory)


# --- the rules, in the order their rejections are reported -----------------------------------

def rule_decodes(x: Insn) -> None:
    """Bytes that do not decode, or decode differently under AMD's rules, could be anything."""
    if x.ins.code == C.INVALID:
        raise Reject("decodes", "bytes do not decode to an instruction")
    if len(x.raw) != x.ins.len:
        raise Reject("decodes", f"iced-x86 decodes {x.ins.len} bytes here, capstone "
                     f"{len(x.raw)}: the decoders disagree on the boundaries")
    amd = next(iter(ix.Decoder(64, x.raw, ix.DecoderOptions.AMD, ip=0)))
    if not amd.eq_all_bits(x.ins):
        raise Reject("decodes", "AMD CPUs decode these bytes differently")


def rule_prefixes(x: Insn) -> None:
    """Only GNU as's canonical prefix order: what the decoders model is what the CPU does."""
    if x.rex_then_prefix:
        raise Reject("prefixes", "prefix after REX (the CPU ignores that REX)")
    p = x.prefixes
    if x.ins.mnemonic in _NOPS and set(p) <= {0x66, 0x2E} and p.count(0x2E) <= 1:
        return  # the assemblers' padding: 66 2e 0f 1f ..., cs nopw
    if x.ins.code == C.CALL_REL32_64 and p == b"\x67":
        return  # ld's relaxation of `call *f@GOTPCREL(%rip)` (the psABI's `addr32 call f`)
    if x.ins.flow_control != ix.FlowControl.NEXT and p not in (b"", b"\x65\x67"):
        raise Reject("prefixes", "legacy prefix on a control transfer other than %gs + 0x67")
    slots = [_PREFIX_SLOT.get(b, -1) for b in p]
    if -1 in slots or slots != sorted(set(slots)):
        raise Reject("prefixes", f"prefixes {p.hex(' ')} are not one each of %gs, 0x67, 0x66, "
                     "lock/rep in that order")


def rule_allowed_instruction(x: Insn) -> None:
    """Only instructions whose whole effect is on registers and checked memory operands."""
    ins = x.ins
    vex = ins.encoding == ix.EncodingKind.VEX
    if not vex and ins.encoding != ix.EncodingKind.LEGACY:
        raise Reject("allowed-instruction", "EVEX/XOP/3DNow! encodings are not allowed")
    if R.XMM0 <= ins.memory_index <= R.ZMM31:
        # Each element's address is base + a vector lane: no single operand to confine.
        raise Reject("allowed-instruction", "VSIB addressing (gather/scatter) is not allowed")
    if ins.is_privileged:
        raise Reject("allowed-instruction", "privileged instruction")
    if ins.flow_control not in (ix.FlowControl.NEXT, ix.FlowControl.INTERRUPT,
                                ix.FlowControl.EXCEPTION) and ins.code not in BRANCH_FORMS:
        raise Reject("allowed-instruction", "control transfer not of a 64-bit near form "
                     "(far, 16-bit, ret imm16 or 32-bit-address loop)")
    features = set(ins.cpuid_features())
    if vex:
        if features and features <= VEX_FEATURES and ins.mnemonic not in SIMD_DENIED:
            return
        raise Reject("allowed-instruction", "VEX instruction outside AVX2, FMA, F16C, BMI1/2")
    if ins.mnemonic in ALLOWED_MNEMONICS:
        return
    if features and features <= SIMD_FEATURES and ins.mnemonic not in SIMD_DENIED:
        return
    raise Reject("allowed-instruction", "instruction is not in the allowlist")


def rule_cpu_level(x: Insn) -> None:
    """An image runs only where the CPU has its level (the runtime checks); code beyond the
    level would fault there, and cpuid as the sandbox sees it reports no more than the level."""
    if x.ins.mnemonic == M.TZCNT:
        return  # `rep bsf`, as gcc emits it at every level: a CPU without BMI1 runs bsf
    need = max((LEVEL_OF_MNEMONIC.get(x.ins.mnemonic, CpuLevel.X86_64),
                *(LEVEL_OF_FEATURE.get(f, CpuLevel.X86_64) for f in x.ins.cpuid_features())),
               key=lambda lv: lv.rank)
    if need.rank > x.level.rank:
        raise Reject("cpu-level", f"needs {need.value}; the image's level is {x.level.value}")


def rule_runtime_call(x: Insn) -> None:
    """A system call would reach the kernel with the host's privileges."""
    if x.ins.mnemonic in _SYSTEM_CALLS:
        raise Reject("runtime-call", "system call instruction; must be call __tmebox_rt_syscall")


def rule_segment_register(x: Insn) -> None:
    """Loading any selector (mov/pop sreg, lss...) reloads a segment base, e.g. gs to 0."""
    if x.written & _SEGMENT_REGISTERS:
        raise Reject("segment-register", "writes a segment register")


def rule_fs_segment(x: Insn) -> None:
    """%fs points at the host's thread data; sandboxes use __tmebox_tp instead."""
    if x.ins.segment_prefix == R.FS or any(m.segment == R.FS for m in x.memory):
        raise Reject("fs-segment", "%fs-segment memory access")


def _gs32(ins: ix.Instruction) -> bool:
    """The explicit memory operand is %gs-relative with 32-bit addressing (by the decoder:
    32-bit base/index registers, or a 4-byte displacement alone)."""
    regs = [r for r in (ins.memory_base, ins.memory_index) if r != R.NONE]
    addr32 = all(r in _GPR32 for r in regs) if regs else ins.memory_displ_size == 4
    return ins.segment_prefix == R.GS and addr32


def rule_memory_operand(x: Insn) -> bool:
    """An access outside %gs + 32-bit offset could reach any address; returns: %rip-relative.

    Both the explicit operand (also of prefetch and clflush, which iced-x86 reports as no
    access, but which time host addresses) and every access the decoder reports (implicit ones
    too) are accounted for: %gs + 32-bit, %rip-relative without a segment, or the stack of a
    push/pop/call/ret form. String instructions are the string rule's.
    """
    ins = x.ins
    if ins.is_string_instruction:
        return False
    rip = ins.memory_base == R.RIP and ins.segment_prefix == R.NONE
    explicit = any(ins.op_kind(i) == ix.OpKind.MEMORY for i in range(ins.op_count))
    if explicit and ins.mnemonic not in _NO_ACCESS and not (rip or _gs32(ins)):
        raise Reject("memory-operand", "memory access without %gs + 32-bit addressing")
    if rip and ins.code in _BIT_OFFSET_FORMS and ins.op0_kind == ix.OpKind.MEMORY:
        raise Reject("memory-operand", "%rip-relative bit string with a register bit offset "
                     "(reaches the operand + offset/8)")
    for m in x.memory:
        if m.segment == R.GS and m.address_size == ix.CodeSize.CODE32:
            continue
        if rip and m.base == R.NONE and m.index == R.NONE \
                and m.displacement == ins.ip_rel_memory_address:
            continue  # (iced-x86 reports the resolved address)
        if m.segment == R.SS and m.base == R.RSP and m.index == R.NONE \
                and ins.code in STACK_FORMS:
            continue
        raise Reject("memory-operand", "memory access without %gs + 32-bit addressing")
    return rip and explicit and ins.mnemonic not in _NO_ACCESS  # lea only computes


def rule_string_instruction(x: Insn) -> Role:
    """movs/stos/... address %ds:%rsi/%es:%rdi; only freshly confined registers stay inside."""
    ins = x.ins
    if not ins.is_string_instruction:
        return Role.PLAIN
    kinds = {ins.op_kind(i) for i in range(ins.op_count)} - {ix.OpKind.REGISTER}
    if ins.segment_prefix != R.NONE or not kinds or not kinds <= set(_STRING_MEMORY) \
            or any(m.address_size != ix.CodeSize.CODE64 for m in x.memory):
        raise Reject("string-instruction", "string instruction with a segment or address-size "
                     "prefix")
    di, si = ix.OpKind.MEMORY_ESRDI in kinds, ix.OpKind.MEMORY_SEG_RSI in kinds
    return Role.STRING_DI_SI if di and si else Role.STRING_DI if di else Role.STRING_SI


def rule_base_register(x: Insn) -> None:
    """%r14 is the window base that every mask and re-confinement ORs in."""
    if x.written & _R14_FAMILY:
        raise Reject("base-register", "writes %r14 (the window base)")


def _pops_into_rsp(ins: ix.Instruction) -> bool:
    # Both encodings of `pop %rsp` (5c and 8f /0 with a register operand; found by the escape
    # fuzzer): %rsp becomes whatever the stack held.
    return (ins.code in _POPS and ins.op0_kind == ix.OpKind.REGISTER
            and ins.op0_register == R.RSP)


def rule_stack_pointer(x: Insn) -> Role:
    """%rsp must stay in the window; push/pop/call/ret touch memory so guards stop them."""
    ins = x.ins
    if not x.written & _RSP_FAMILY:
        return Role.PLAIN
    if ins.code in STACK_FORMS and not _pops_into_rsp(ins):
        return Role.PLAIN
    if ins.code in _AND64_IMM and ins.op0_kind == ix.OpKind.REGISTER \
            and ins.op0_register == R.RSP and ins.immediate(1) >> 63:
        return Role.PLAIN
    if writes_all_of_esp(ins):
        return Role.ESP_WRITE
    if is_lea_r14(ins, x.raw, R.RSP):
        return Role.LEA_RSP
    raise Reject("stack-pointer", "writes %rsp other than by push/pop/call/ret, and $-imm, or "
                 f"one of {len(ESP_WRITE_FORMS)} always-writing 32-bit forms followed by "
                 "lea rsp, [rsp+r14]")


def rule_indirect_branch(x: Insn) -> Role:
    """code+data: an indirect target is only safe masked to a bundle start in the window."""
    ins = x.ins
    indirect = ins.is_jmp_near_indirect or ins.is_call_near_indirect
    if not indirect or x.mode != Isolation.CODE_DATA:
        return Role.PLAIN
    if ins.code in (C.JMP_RM64, C.CALL_RM64) and ins.op0_kind == ix.OpKind.REGISTER \
            and ins.op0_register == R.R11:
        return Role.BRANCH_R11
    raise Reject("indirect-branch", "indirect branch not through masked %r11")


def rule_return(x: Insn) -> Role:
    """code+data: a return address on the stack is tenant data; ret may only use one it
    pushed itself, masked, in the same group (nothing else writes a running sandbox)."""
    if x.mode == Isolation.CODE_DATA and x.ins.mnemonic == M.RET:
        return Role.RET_R11
    return Role.PLAIN


CHECKS = (rule_decodes, rule_runtime_call, rule_segment_register, rule_allowed_instruction,
          rule_cpu_level, rule_fs_segment, rule_base_register, rule_prefixes)
ROLE_RULES = (rule_string_instruction, rule_stack_pointer, rule_indirect_branch, rule_return)


def classify(raw: bytes, mode: str, level: CpuLevel = CpuLevel.X86_64) -> Kind:
    """Run every per-instruction rule on the instruction capstone found in `raw`.

    The result depends only on `raw`, `mode` and `level`: targets are kept relative (`disp`).
    """
    ins = next(iter(ix.Decoder(64, raw, ip=0)))
    x = Insn.of(ins, raw, mode, level)
    try:
        for check in CHECKS:
            check(x)
        rip = rule_memory_operand(x)
        roles = {rule(x) for rule in ROLE_RULES} | {member_role(ins, raw)}
        roles.discard(Role.PLAIN)
        if len(roles) > 1:
            raise Reject("stack-pointer", "one instruction in two group roles")
    except Reject as e:
        return Kind(rule=e.rule, reason=e.reason)
    role = roles.pop() if roles else Role.PLAIN
    direct = ins.op0_kind == ix.OpKind.NEAR_BRANCH64
    if not (role or direct or rip):
        return PLAIN
    target = ins.near_branch_target if direct else ins.ip_rel_memory_address if rip else 0
    disp = (target - len(raw) + (1 << 63)) % (1 << 64) - (1 << 63)  # as a signed offset
    return Kind(role=role, direct=direct, rip=rip, disp=disp if direct or rip else 0)


assert abi.BUNDLE_MASK == -32  # groups.AND_R11 and the docs say $-32
