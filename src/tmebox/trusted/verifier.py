"""The verifier: the trusted core that decides whether an image's code may run in a window.

It enforces docs/design.md exactly, as one function per rule (`rule_*`), each with its reason
as docstring. Per-instruction rules depend only on an instruction's bytes, so their decision
is cached by those bytes (compiled code repeats instructions a lot); the rules that depend on
position (branch and rip-relative targets, bundles, groups) run on every instruction.

Decoding: capstone decodes the whole code linearly in one C call (boundaries only); iced-x86
decodes each distinct instruction again, with operand and register-access detail for the
rules, and must find the same length. Equal lengths at every start mean both decoders see the
same instruction stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

import iced_x86 as ix
import numpy as np

from tmebox.trusted import abi, decode
from tmebox.trusted.errors import VerificationError
from tmebox.trusted.image import Image

# Same root as the sandbox libc cache (tmebox.toolchain.libc): $TMEBOX_CACHE or ~/.cache/tmebox.
CACHE_DIR = Path(os.environ.get("TMEBOX_CACHE") or Path.home() / ".cache" / "tmebox") / "verdicts"

# One line per rule; docs/verifier.md has the table with a rejected example for each.
RULES = {
    "decodes": "every byte decodes, and iced-x86 and capstone agree on every boundary",
    "allowed-instruction": "only unprivileged computation: integer, x87, MMX, SSE-SSE4.2",
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


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    isolation: str
    instructions: int
    code_bytes: int
    address: int | None = None
    bytes: bytes = b""
    disassembly: str = ""
    rule: str = ""
    reason: str = ""

    def summary(self) -> str:
        if self.ok:
            return (f"{self.name}: ok ({self.isolation}, {self.instructions:,} instructions, "
                    f"{self.code_bytes:,} bytes)")
        where = f" at {self.address:#x}" if self.address is not None else ""
        text = f": {self.bytes.hex(' ')}  {self.disassembly}" if self.bytes else ""
        return f"{self.name}: REJECTED{where}{text} — rule {self.rule}: {self.reason}"

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["bytes"] = self.bytes.hex()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        d = json.loads(text)
        d["bytes"] = bytes.fromhex(d["bytes"])
        return cls(**d)


class Reject(Exception):
    """A rule is broken; `address`/`length` name the instruction when there is one."""

    def __init__(self, rule: str, reason: str, address: int | None = None,
                 length: int = 0) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule, self.reason, self.address, self.length = rule, reason, address, length


# Roles of instructions in the unsplittable groups of docs/design.md.
PLAIN, ESP_WRITE, LEA_RSP, CONF_EDI, LEA_RDI, CONF_ESI, LEA_RSI, AND_R11, OR_R11 = range(9)
PUSH_R11, STRING_DI, STRING_SI, STRING_DI_SI, BRANCH_R11, RET_R11 = range(9, 15)
# What must immediately precede each group's last instruction (the first is the group start).
GROUP_PREFIX = {
    LEA_RSP: (ESP_WRITE,),
    STRING_DI: (CONF_EDI, LEA_RDI),
    STRING_SI: (CONF_ESI, LEA_RSI),
    STRING_DI_SI: (CONF_EDI, LEA_RDI, CONF_ESI, LEA_RSI),
    BRANCH_R11: (AND_R11, OR_R11),
    RET_R11: (AND_R11, OR_R11, PUSH_R11),
}


@dataclass(frozen=True, slots=True)
class Kind:
    """What the verifier knows about an instruction from its bytes alone."""

    rule: str = ""  # non-empty: the instruction breaks this rule wherever it is
    reason: str = ""
    role: int = PLAIN
    direct: bool = False  # direct branch: its target is checked
    rip: bool = False  # %rip-relative memory operand: its target is checked
    disp: int = 0  # direct or rip: target = address of the next instruction + disp


_PLAIN = Kind()  # the common case: nothing to check beyond the bytes


# --- the instruction allowlist --------------------------------------------------------------

def _mnemonics(names: str) -> frozenset[int]:
    return frozenset(getattr(ix.Mnemonic, n) for n in names.split())


_CC = "A AE B BE E G GE L LE NE NO NP NS O P S"
# General-purpose instructions gcc and musl emit, and their harmless relatives. Not here, on
# purpose: far/interrupt control flow, I/O, descriptor tables, enter/leave, popf (sets TF/AC,
# which would leak into the host), xlat, bound, segment loads, TSX, xsave/xrstor (can load PKRU),
# wr/rd{fs,gs}base, {rd,wr}pkru, monitor/mwait, hlt, cli/sti, movdir64b/enqcmd.
ALLOWED_MNEMONICS = _mnemonics(
    "WAIT ADC ADD AND BSF BSR BSWAP BT BTC BTR BTS CALL CBW CDQ CDQE CLC CLD CMC CMP CMPXCHG "
    "CMPXCHG8B CMPXCHG16B CPUID CQO CWD CWDE DEC DIV IDIV IMUL INC JMP JRCXZ JECXZ LAHF LEA "
    "LOOP LOOPE LOOPNE MOV MOVBE MOVNTI MOVSX MOVSXD MOVZX MUL NEG NOP NOT OR PAUSE POP PUSH "
    "PUSHFQ RCL RCR RET ROL ROR SAHF SAL SAR SBB SHL SHLD SHR SHRD STC STD SUB TEST "
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
SIMD_DENIED = _mnemonics("MASKMOVQ MASKMOVDQU")

_LEGACY_PREFIXES = frozenset(b"\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65\x66\x67")
_SEGMENT_PREFIXES = frozenset(b"\x2e\x36\x3e\x26\x64\x65")
_WRITES = frozenset((ix.OpAccess.WRITE, ix.OpAccess.COND_WRITE, ix.OpAccess.READ_WRITE,
                     ix.OpAccess.READ_COND_WRITE))
_RSP_FAMILY = frozenset((ix.Register.RSP, ix.Register.ESP, ix.Register.SP, ix.Register.SPL))
_R14_FAMILY = frozenset((ix.Register.R14, ix.Register.R14D, ix.Register.R14W, ix.Register.R14L))
_SEGMENT_REGISTERS = frozenset((ix.Register.ES, ix.Register.CS, ix.Register.SS, ix.Register.DS,
                                ix.Register.FS, ix.Register.GS))
_IMPLICIT_STACK = _mnemonics("PUSH PUSHFQ POP CALL RET")
_NO_ACCESS = _mnemonics("LEA NOP")  # memory operand syntax, no memory access
_GROUP_MNEMONICS = _mnemonics("MOV OR AND LEA PUSH")  # of the group members that are not branches
_IMPLICIT_MEMORY = frozenset((
    ix.OpKind.MEMORY_SEG_SI, ix.OpKind.MEMORY_SEG_ESI, ix.OpKind.MEMORY_SEG_RSI,
    ix.OpKind.MEMORY_SEG_DI, ix.OpKind.MEMORY_SEG_EDI, ix.OpKind.MEMORY_SEG_RDI,
    ix.OpKind.MEMORY_ESDI, ix.OpKind.MEMORY_ESEDI, ix.OpKind.MEMORY_ESRDI))
_SYSTEM_CALLS = _mnemonics("SYSCALL SYSENTER INT INT1 INTO")
_REGISTER, _MEMORY = ix.OpKind.REGISTER, ix.OpKind.MEMORY
_INFO = ix.InstructionInfoFactory()


@dataclass(slots=True)
class Insn:
    """One decoded instruction and the facts several rules need, computed once."""

    ins: ix.Instruction
    raw: bytes
    mode: str
    mnemonic: int
    prefixes: bytes  # legacy prefix bytes
    written: frozenset[int]  # registers (any width) written, implicitly or explicitly
    regs: tuple[int, ...]  # register operands
    memory: tuple[int, ...]  # kinds of memory operands (explicit and implicit)

    @classmethod
    def of(cls, ins: ix.Instruction, raw: bytes, mode: str) -> Insn:
        regs, memory = [], []
        for i in range(ins.op_count):
            kind = ins.op_kind(i)
            if kind == _REGISTER:
                regs.append(ins.op_register(i))
            elif kind == _MEMORY or kind in _IMPLICIT_MEMORY:
                memory.append(kind)
        return cls(ins, raw, mode, ins.mnemonic, _prefixes(raw), _written(ins), tuple(regs),
                   tuple(memory))


def _prefixes(raw: bytes) -> bytes:
    """The legacy prefix bytes at the start of an instruction."""
    i = 0
    while i < len(raw) and raw[i] in _LEGACY_PREFIXES:
        i += 1
    return raw[:i]


def _written(ins: ix.Instruction) -> frozenset[int]:
    return frozenset([u.register for u in _INFO.info(ins).used_registers()
                      if u.access in _WRITES])


def _is(x: Insn, mnemonic: int, op0: int, op1: int) -> bool:
    """`mnemonic op0, op1` with two register operands."""
    return x.mnemonic == mnemonic and x.ins.op_count == 2 and x.regs == (op0, op1)


def _is_lea_r14(x: Insn, dest: int) -> bool:
    """Exactly `lea dest, [dest + r14*1]` (or `[r14 + dest*1]`): dest + window base.

    Any other address would not confine: a displacement (even a small one) can carry past
    the window's end, a 0x67 prefix truncates the sum to 32 bits, another scale or register
    adds more than the base. A segment prefix is harmless on lea, but one form is enough.
    """
    ins = x.ins
    return (x.mnemonic == ix.Mnemonic.LEA and not x.prefixes and x.regs == (dest,)
            and ins.op_count == 2 and ins.op1_kind == _MEMORY
            and {ins.memory_base, ins.memory_index} == {dest, ix.Register.R14}
            and ins.memory_index_scale == 1 and ins.memory_displacement == 0)


# --- per-instruction rules: each returns a role (or None) or raises Reject -----------------

def rule_decodes(x: Insn) -> None:
    """Bytes that do not decode could be anything to the CPU."""
    ins = x.ins
    if ins.code == ix.Code.INVALID:
        raise Reject("decodes", "bytes do not decode to an instruction")


def rule_runtime_call(x: Insn) -> None:
    """A system call would reach the kernel with the host's privileges."""
    if x.mnemonic in _SYSTEM_CALLS:
        raise Reject("runtime-call", "system call instruction; must be call __tmebox_rt_syscall")


def rule_allowed_instruction(x: Insn) -> None:
    """Only instructions whose whole effect is on registers and checked memory operands."""
    ins = x.ins
    if ins.encoding != ix.EncodingKind.LEGACY:
        raise Reject("allowed-instruction", "VEX/EVEX/XOP/3DNow! encodings are not allowed")
    if ins.is_privileged:
        raise Reject("allowed-instruction", "privileged instruction")
    if ins.flow_control != ix.FlowControl.NEXT:
        if ins.is_jmp_far or ins.is_call_far or ins.is_jmp_far_indirect \
                or ins.is_call_far_indirect:
            raise Reject("allowed-instruction", "far branch")
        if 0x66 in x.prefixes:
            # Intel ignores 0x66 on near branches, AMD truncates to 16 bits.
            raise Reject("allowed-instruction", "operand-size prefix on a branch")
    if x.mnemonic == ix.Mnemonic.RET and ins.op_count:
        raise Reject("allowed-instruction", "ret imm16 moves %rsp by up to 64 KiB")
    if x.mnemonic in ALLOWED_MNEMONICS:
        return
    features = ins.cpuid_features()
    if features and set(features) <= SIMD_FEATURES and x.mnemonic not in SIMD_DENIED:
        return
    raise Reject("allowed-instruction", "instruction is not in the allowlist")


def rule_segment_register(x: Insn) -> None:
    """Loading any selector (mov/pop sreg, lss...) reloads a segment base, e.g. gs to 0."""
    if x.written & _SEGMENT_REGISTERS:
        raise Reject("segment-register", "writes a segment register")


def rule_fs_segment(x: Insn) -> None:
    """%fs points at the host's thread data; sandboxes use __tmebox_tp instead."""
    if 0x64 in x.prefixes and x.memory and x.mnemonic not in _NO_ACCESS:
        raise Reject("fs-segment", "%fs-segment memory access")


def rule_memory_operand(x: Insn) -> bool:
    """An access outside %gs + 32-bit offset could reach any address; returns: is %rip-relative."""
    ins = x.ins
    ops = x.memory
    if not ops or x.mnemonic in _NO_ACCESS or ins.is_string_instruction:
        return False
    if any(k != ix.OpKind.MEMORY for k in ops):
        raise Reject("memory-operand", "implicit memory operand through a 64-bit register")
    prefixes = x.prefixes
    if sum(p in _SEGMENT_PREFIXES for p in prefixes) > 1:
        raise Reject("memory-operand", "more than one segment prefix")
    if ins.memory_base == ix.Register.RIP and ins.segment_prefix == ix.Register.NONE:
        return True
    if ins.segment_prefix == ix.Register.GS and 0x67 in prefixes:
        return False
    raise Reject("memory-operand", "memory access without %gs + 32-bit addressing")


def rule_string_instruction(x: Insn) -> int | None:
    """movs/stos/... address %ds:%rsi/%es:%rdi; only freshly confined registers stay inside."""
    ins = x.ins
    if not ins.is_string_instruction:
        return None
    kinds = set(x.memory)
    if ins.segment_prefix != ix.Register.NONE or 0x67 in x.prefixes or \
            not kinds <= {ix.OpKind.MEMORY_SEG_RSI, ix.OpKind.MEMORY_ESRDI}:
        raise Reject("string-instruction", "string instruction with a segment or address-size "
                     "prefix")
    di, si = ix.OpKind.MEMORY_ESRDI in kinds, ix.OpKind.MEMORY_SEG_RSI in kinds
    return STRING_DI_SI if di and si else STRING_DI if di else STRING_SI


def rule_base_register(x: Insn) -> None:
    """%r14 is the window base that every mask and re-confinement ORs in."""
    if x.written & _R14_FAMILY:
        raise Reject("base-register", "writes %r14 (the window base)")


def rule_stack_pointer(x: Insn) -> int | None:
    """%rsp must stay in the window; push/pop/call/ret touch memory so guards stop them."""
    ins = x.ins
    if not x.written & _RSP_FAMILY:
        return None
    stack_regs = [r for r in x.regs if r in _RSP_FAMILY]
    if x.mnemonic in _IMPLICIT_STACK and not (x.mnemonic == ix.Mnemonic.POP and stack_regs):
        return None
    if stack_regs and all(r == ix.Register.ESP for r in stack_regs):
        return ESP_WRITE
    if x.mnemonic == ix.Mnemonic.AND and stack_regs == [ix.Register.RSP] \
            and ins.op1_kind in (ix.OpKind.IMMEDIATE8TO64, ix.OpKind.IMMEDIATE32TO64) \
            and ins.immediate(1) >> 63:
        return None
    if _is_lea_r14(x, ix.Register.RSP):
        return LEA_RSP
    raise Reject("stack-pointer", "writes %rsp other than by push/pop/call/ret, "
                 "and $-imm, or a 32-bit write followed by lea rsp, [rsp+r14]")


def rule_return(x: Insn) -> int | None:
    """code+data: a return address on the stack is tenant data; ret may only use one it
    pushed itself, masked, in the same group (nothing else writes a running sandbox)."""
    if x.mode == "code+data" and x.mnemonic == ix.Mnemonic.RET:
        return RET_R11
    return None


def rule_indirect_branch(x: Insn) -> int | None:
    """code+data: an indirect target is only safe masked to a bundle start in the window."""
    ins = x.ins
    if not (ins.is_jmp_near_indirect or ins.is_call_near_indirect):
        return None
    if ins.op0_kind == ix.OpKind.REGISTER and ins.op0_register == ix.Register.R11:
        return BRANCH_R11 if x.mode == "code+data" else None
    if x.mode == "code+data":
        raise Reject("indirect-branch", "indirect branch not through masked %r11")
    return None


_R = ix.Register
# (role, mnemonic, op0, op1) of the two-register group members.
_GROUP_MEMBERS = (
    (CONF_EDI, ix.Mnemonic.MOV, _R.EDI, _R.EDI), (CONF_ESI, ix.Mnemonic.MOV, _R.ESI, _R.ESI),
    (OR_R11, ix.Mnemonic.OR, _R.R11, _R.R14))


def _group_role(x: Insn) -> int:
    """Roles of the group members that are ordinary instructions on their own."""
    ins = x.ins
    if not x.regs or x.mnemonic not in _GROUP_MNEMONICS:
        return PLAIN
    for role, mnemonic, op0, op1 in _GROUP_MEMBERS:
        if _is(x, mnemonic, op0, op1):
            return role
    if _is_lea_r14(x, _R.RDI):
        return LEA_RDI
    if _is_lea_r14(x, _R.RSI):
        return LEA_RSI
    if x.mnemonic == ix.Mnemonic.AND and x.regs == (_R.R11D,) \
            and ins.op1_kind in (ix.OpKind.IMMEDIATE8TO32, ix.OpKind.IMMEDIATE32) \
            and ins.immediate(1) & 0xFFFFFFFF == abi.BUNDLE_MASK & 0xFFFFFFFF:
        return AND_R11
    if x.mnemonic == ix.Mnemonic.PUSH and x.regs == (_R.R11,):
        return PUSH_R11
    return PLAIN


def classify(raw: bytes, mode: str) -> Kind:
    """Apply every per-instruction rule to the instruction capstone found in `raw`.

    The result depends only on `raw` and `mode`: targets are kept relative (`disp`).
    """
    ins = next(iter(ix.Decoder(64, raw, ip=0)))
    x = Insn.of(ins, raw, mode)
    try:
        rule_decodes(x)
        if ins.len != len(raw):
            raise Reject("decodes", f"iced-x86 decodes {ins.len} bytes here, capstone "
                         f"{len(raw)}: the decoders disagree on the boundaries")
        for rule in (rule_runtime_call, rule_segment_register, rule_allowed_instruction,
                     rule_fs_segment, rule_base_register):
            rule(x)
        rip = rule_memory_operand(x)
        role = (rule_string_instruction(x) or rule_stack_pointer(x) or rule_indirect_branch(x)
                or rule_return(x) or _group_role(x))
    except Reject as e:
        return Kind(rule=e.rule, reason=e.reason)
    direct = ins.op0_kind == ix.OpKind.NEAR_BRANCH64
    if not (role or direct or rip):
        return _PLAIN
    target = ins.near_branch_target if direct else ins.ip_rel_memory_address if rip else 0
    disp = (target - len(raw) + (1 << 63)) % (1 << 64) - (1 << 63)  # as a signed offset
    return Kind(role=role, direct=direct, rip=rip, disp=disp if direct or rip else 0)


_KINDS: dict[str, dict[bytes, Kind]] = {mode: {} for mode in abi.ISOLATION_MODES}
_KINDS_LIMIT = 1 << 20  # distinct instructions remembered per mode


# --- whole-code checks ----------------------------------------------------------------------

@dataclass
class _Scan:
    """The result of the linear pass: instruction starts, group interiors, branch targets."""

    count: int
    starts: np.ndarray  # True at every instruction start (index: offset - code_offset)
    interior: bytearray  # 1 at the 2nd..last instruction of every group
    branches: list[tuple[int, int, int]]  # (address, length, target)


def _scan(code: bytes, code_offset: int, image_size: int, mode: str) -> _Scan:
    """Walk capstone's instructions, apply the cached per-instruction rules, then the
    positional ones. The fast path (a plain instruction seen before) is one dict lookup."""
    kinds = _KINDS[mode]
    if len(kinds) > _KINDS_LIMIT:
        kinds.clear()
    get = kinds.get
    bundled = mode == "code+data"
    addresses, sizes = decode.capstone_boundaries(code, code_offset)
    interior = bytearray(len(code))
    branches: list[tuple[int, int, int]] = []
    run: list[tuple[int, int, int]] = []  # the current run of consecutive group-member roles
    # bundle: the first instruction that crosses a boundary ends the walk.
    crossing = np.flatnonzero((addresses & (abi.BUNDLE_SIZE - 1)) + sizes > abi.BUNDLE_SIZE)
    stop = int(crossing[0]) if bundled and len(crossing) else len(addresses)
    for off, n in zip(addresses[:stop].tolist(), sizes[:stop].tolist(), strict=True):
        rel = off - code_offset
        raw = code[rel:rel + n]
        kind = get(raw)
        if kind is None:
            kind = kinds[raw] = classify(raw, mode)
        if kind is _PLAIN and not run:
            continue
        if kind.rule:
            raise Reject(kind.rule, kind.reason, off, n)
        if run and run[-1][2] == ESP_WRITE and kind.role != LEA_RSP:
            raise Reject("stack-pointer", "32-bit write to %esp not followed by "
                         "lea rsp, [rsp+r14]", run[-1][0], run[-1][1])
        if kind.role:
            run.append((off, n, kind.role))
            if kind.role in GROUP_PREFIX:
                _check_group(run, interior, code_offset, bundled)
        elif run:
            run = []
        target = off + n + kind.disp
        if kind.direct:
            branches.append((off, n, target))
        elif kind.rip and not 0 <= target < image_size:
            raise Reject("rip-target", f"%rip-relative target {target:#x} outside the image "
                         f"[0, {image_size:#x})", off, n)
    if stop < len(addresses):
        raise Reject("bundle", "instruction crosses a 32-byte bundle boundary",
                     int(addresses[stop]), int(sizes[stop]))
    if run and run[-1][2] == ESP_WRITE:
        raise Reject("stack-pointer", "32-bit write to %esp not followed by lea rsp, [rsp+r14]",
                     run[-1][0], run[-1][1])
    decoded = int(sizes.sum())
    if decoded != len(code):
        raise Reject("decodes", "capstone cannot decode this instruction",
                     code_offset + decoded, 0)
    starts = np.zeros(len(code), dtype=bool)
    starts[(addresses - code_offset).astype(np.intp)] = True
    return _Scan(len(addresses), starts, interior, branches)


def _check_group(run: list[tuple[int, int, int]], interior: bytearray, code_offset: int,
                 bundled: bool) -> None:
    """The group ending with run[-1] is complete, and (code+data) inside one bundle."""
    last_off, last_n, role = run[-1]
    need = GROUP_PREFIX[role]
    members = run[-1 - len(need):]
    if tuple(m[2] for m in members[:-1]) != need or len(members) != len(need) + 1:
        rule = {LEA_RSP: "stack-pointer", BRANCH_R11: "indirect-branch",
                RET_R11: "return"}.get(role, "string-instruction")
        raise Reject(rule, "not immediately preceded by its confinement group: "
                     + {LEA_RSP: "a 32-bit write to %esp",
                        BRANCH_R11: "and $-32, %r11d; or %r14, %r11",
                        RET_R11: "and $-32, %r11d; or %r14, %r11; push %r11"}.get(
                            role, "mov edi,edi; lea rdi,[r14+rdi] / mov esi,esi; "
                            "lea rsi,[r14+rsi]"),
                     last_off, last_n)
    first = members[0][0]
    if bundled and first // abi.BUNDLE_SIZE != (last_off + last_n - 1) // abi.BUNDLE_SIZE:
        raise Reject("bundle", f"group starting at {first:#x} crosses a bundle boundary",
                     last_off, last_n)
    for off, _, _ in members[1:]:
        interior[off - code_offset] = 1
    run.clear()


def _valid_target(scan: _Scan, target: int, code_offset: int, code_end: int) -> bool:
    rel = target - code_offset
    return code_offset <= target < code_end and scan.starts[rel] and not scan.interior[rel]


def _check_targets(scan: _Scan, code_offset: int, code_end: int, rt_range: tuple[int, int],
                   rt_entries: set[int], entries: dict[str, int]) -> None:
    """runtime-call, direct-branch-target, entry-point: every way in lands on checked code."""
    rt_start, rt_end = rt_range
    for off, n, target in scan.branches:
        if rt_start <= target < rt_end and target not in rt_entries:
            raise Reject("runtime-call", f"direct branch to {target:#x} in the runtime page, "
                         "not one of its two entries", off, n)
        if target not in rt_entries and not _valid_target(scan, target, code_offset, code_end):
            raise Reject("direct-branch-target", f"direct branch to {target:#x}, not a checked "
                         "instruction start outside a group nor a runtime entry", off, n)
    for what, target in entries.items():
        if not _valid_target(scan, target, code_offset, code_end):
            raise Reject("entry-point", f"{what} at {target:#x} is not a checked instruction "
                         "start outside a group", target, 0)


def verify_code(code: bytes, *, code_offset: int, image_size: int,
                rt_range: tuple[int, int] = (0, abi.RT_PAGE_SIZE),
                isolation: str = abi.DEFAULT_ISOLATION, entries: dict[str, int] | None = None,
                name: str = "<code>") -> Verdict:
    """Verify raw machine code that sits at image offset `code_offset` of an image."""
    if isolation not in abi.ISOLATION_MODES:
        raise VerificationError(f"{name}: unknown isolation mode {isolation!r}")
    rt_entries = {rt_range[0] + abi.RT_SYSCALL_OFFSET, rt_range[0] + abi.RT_EXIT_OFFSET}
    code_end = code_offset + len(code)
    try:
        if isolation == "code+data" and code_offset % abi.BUNDLE_SIZE:
            raise Reject("bundle", f"code starts at {code_offset:#x}, not on a bundle boundary")
        scan = _scan(code, code_offset, image_size, isolation)
        _check_targets(scan, code_offset, code_end, rt_range, rt_entries, entries or {})
    except Reject as e:
        return _rejected(name, isolation, code, code_offset, e)
    return Verdict(name=name, ok=True, isolation=isolation, instructions=scan.count,
                   code_bytes=len(code))


def _rejected(name: str, isolation: str, code: bytes, code_offset: int, e: Reject) -> Verdict:
    raw, text = b"", ""
    if e.address is not None and code_offset <= e.address < code_offset + len(code):
        rel = e.address - code_offset
        length = e.length or next(iter(ix.Decoder(64, code[rel:rel + 15]))).len
        raw = code[rel:rel + length]
        text = decode.capstone_text(raw, e.address) or _iced_text(raw, e.address)
    return Verdict(name=name, ok=False, isolation=isolation, instructions=0,
                   code_bytes=len(code), address=e.address, bytes=raw, disassembly=text,
                   rule=e.rule, reason=e.reason)


def _iced_text(raw: bytes, address: int) -> str:
    ins = next(iter(ix.Decoder(64, raw, ip=address)))
    return "(bad)" if ins.code == ix.Code.INVALID else ix.Formatter(
        ix.FormatterSyntax.INTEL).format(ins)


def verify_image(image: Image) -> Verdict:
    """Verify all of an image's code except the runtime page (which the runtime replaces)."""
    rt_start, rt_end = image.rt_range
    code = image.code.data[rt_end - image.code.offset:]
    entries = {"entry": image.entry}
    entries.update({f"export {n!r}": off for n, off in image.exports.items()})
    return verify_code(code, code_offset=rt_end, image_size=image.size, rt_range=image.rt_range,
                       isolation=image.isolation, entries=entries, name=image.name)


def _source_hash() -> str:
    """Hash of the code that decides verdicts: a verifier change invalidates cached ones."""
    h = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        h.update(module.name.encode() + b"\0" + module.read_bytes())
    for package in ("iced-x86", "capstone"):
        h.update(f"{package} {importlib.metadata.version(package)}".encode())
    return h.hexdigest()


_SOURCE_HASH = _source_hash()
_VERDICTS: dict[str, Verdict] = {}


def verify_file(path: Path | str) -> Verdict:
    """Load and verify an image; verdicts are cached by content and verifier hash."""
    image = Image.load(path)
    key = hashlib.sha256(f"{image.sha256} {_SOURCE_HASH}".encode()).hexdigest()
    verdict = _VERDICTS.get(key) or _read_cached(key)
    if verdict is None:
        verdict = verify_image(image)
        _write_cached(key, verdict)
    _VERDICTS[key] = verdict
    return dataclasses.replace(verdict, name=str(path))


def _read_cached(key: str) -> Verdict | None:
    try:
        return Verdict.from_json((CACHE_DIR / key).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_cached(key: str, verdict: Verdict) -> None:
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = CACHE_DIR / f".{key}.{os.getpid()}"
        tmp.write_text(verdict.to_json())
        tmp.replace(CACHE_DIR / key)
    except OSError:
        pass  # a read-only cache only costs a re-verification
