"""Sequences for the escape fuzzer: every form the verifier allows, and their neighbours.

A sequence is a list of items (one instruction, or one of the unsplittable groups of
docs/design.md), laid out like `.bundle_align_mode 5` in code+data mode and back to back in data
mode; direct branches are resolved after layout to item starts, group interiors, the middle of
instructions, the runtime entries or anywhere. Instructions come from iced-x86's table of
encoding forms (`Code`) with random operands, encoded by iced's Encoder; then, for some, their
prefixes are permuted, duplicated, moved after REX; some sequences get raw random bytes or byte
mutations. The verifier decides what runs: most of what is generated is meant to pass.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import iced_x86 as ix

from tmebox.fuzz import oracle
from tmebox.trusted import abi, rules, verifier
from tmebox.trusted.cpu import host_level
from tmebox.trusted.verifier import Verdict

if TYPE_CHECKING:
    # iced-x86 types Code and Register as enums; at run time they are modules of ints.
    from iced_x86._iced_x86_py import Code as CodeT
    from iced_x86._iced_x86_py import Register as RegisterT

__all__ = ["Candidate", "Generator"]

C, R, K, OK = ix.Code, ix.Register, ix.OpCodeOperandKind, ix.OpKind
CODE_OFFSET = abi.RT_PAGE_SIZE  # image offset of every sequence
MAX_ITEMS = 16
REPAIRS = 3
_LEGACY = b"\x66\x67\xf2\xf3\xf0\x2e\x36\x3e\x26\x64\x65"



def _names(text: str) -> list[str]:
    return text.split()


_GPR = {
    8: [R.AL, R.CL, R.DL, R.BL, R.SPL, R.BPL, R.SIL, R.DIL, R.R8L, R.R9L, R.R10L, R.R11L,
        R.R12L, R.R13L, R.R14L, R.R15L, R.AH, R.CH, R.DH, R.BH],
    16: [getattr(R, n) for n in _names("AX CX DX BX SP BP SI DI R8W R9W R10W R11W R12W R13W "
                                        "R14W R15W")],
    32: [getattr(R, n) for n in _names("EAX ECX EDX EBX ESP EBP ESI EDI R8D R9D R10D R11D R12D "
                                        "R13D R14D R15D")],
    64: [getattr(R, n) for n in _names("RAX RCX RDX RBX RSP RBP RSI RDI R8 R9 R10 R11 R12 R13 "
                                        "R14 R15")],
}
_CLASSES = {
    "XMM": [getattr(R, f"XMM{i}") for i in range(16)],
    "YMM": [getattr(R, f"YMM{i}") for i in range(16)],
    "MM": [getattr(R, f"MM{i}") for i in range(8)],
    "ST": [getattr(R, f"ST{i}") for i in range(8)],
    "SEG": [R.ES, R.CS, R.SS, R.DS, R.FS, R.GS],
    "CR": [R.CR0, R.CR2, R.CR3, R.CR4, R.CR8],
    "DR": [R.DR0, R.DR1, R.DR2, R.DR3, R.DR6, R.DR7],
}
_REG_KINDS = {}
for _bits in (8, 16, 32, 64):
    for _suffix in ("REG", "OR_MEM", "OPCODE", "RM"):
        if hasattr(K, f"R{_bits}_{_suffix}"):  # there is no R8_RM
            _REG_KINDS[getattr(K, f"R{_bits}_{_suffix}")] = _GPR[_bits]
for _name, _regs in (("XMM", "XMM"), ("MM", "MM"), ("YMM", "YMM")):
    for _suffix in ("REG", "OR_MEM", "RM"):
        _REG_KINDS[getattr(K, f"{_name}_{_suffix}")] = _CLASSES[_regs]
# VEX's second source (vvvv) and the BMI forms' register operands.
_REG_KINDS.update({K.XMM_VVVV: _CLASSES["XMM"], K.YMM_VVVV: _CLASSES["YMM"],
                   K.R32_VVVV: _GPR[32], K.R64_VVVV: _GPR[64]})
_REG_KINDS.update({K.STI_OPCODE: _CLASSES["ST"], K.SEG_REG: _CLASSES["SEG"],
                   K.CR_REG: _CLASSES["CR"], K.DR_REG: _CLASSES["DR"]})
_FIXED_REG = {K.AL: R.AL, K.AX: R.AX, K.EAX: R.EAX, K.RAX: R.RAX, K.CL: R.CL, K.DX: R.DX,
              K.ST0: R.ST0, K.ES: R.ES, K.CS: R.CS, K.SS: R.SS, K.DS: R.DS, K.FS: R.FS,
              K.GS: R.GS}
_MAY_BE_MEMORY = {K.R8_OR_MEM, K.R16_OR_MEM, K.R32_OR_MEM, K.R64_OR_MEM, K.XMM_OR_MEM,
                  K.MM_OR_MEM, K.YMM_OR_MEM}
# The CPU level candidates are verified for: this machine's, so that what the verifier
# accepts (VEX forms included, on an x86-64-v3 CPU) is what the oracle can run.
LEVEL = host_level()
_IMM = {K.IMM8: (OK.IMMEDIATE8, 8), K.IMM16: (OK.IMMEDIATE16, 16), K.IMM32: (OK.IMMEDIATE32, 32),
        K.IMM64: (OK.IMMEDIATE64, 64), K.IMM8SEX16: (OK.IMMEDIATE8TO16, 8),
        K.IMM8SEX32: (OK.IMMEDIATE8TO32, 8), K.IMM8SEX64: (OK.IMMEDIATE8TO64, 8),
        K.IMM32SEX64: (OK.IMMEDIATE32TO64, 32), K.IMM8_CONST_1: (OK.IMMEDIATE8, 0)}
_BRANCH = {K.BR64_1: OK.NEAR_BRANCH64, K.BR64_4: OK.NEAR_BRANCH64, K.BR32_1: OK.NEAR_BRANCH32,
           K.BR32_4: OK.NEAR_BRANCH32, K.BR16_1: OK.NEAR_BRANCH16, K.BR16_2: OK.NEAR_BRANCH16}
_STRING = {K.ES_RDI: OK.MEMORY_ESRDI, K.SEG_RSI: OK.MEMORY_SEG_RSI, K.SEG_RDI: OK.MEMORY_SEG_RDI}
_RSP_R14 = frozenset((R.RSP, R.ESP, R.SP, R.SPL, R.R14, R.R14D, R.R14W, R.R14L))
_SUPPORTED = set(_REG_KINDS) | set(_FIXED_REG) | set(_IMM) | set(_BRANCH) | set(_STRING) \
    | {K.MEM, K.MEM_OFFS}

# Group members (docs/design.md), with the alternative encodings an assembler may pick.
AND_R11 = (bytes.fromhex("4183e3e0"), bytes.fromhex("4181e3e0ffffff"))
OR_R11 = (bytes.fromhex("4d09f3"), bytes.fromhex("4d0bde"))
LEA_RSP = (bytes.fromhex("4a8d2434"),)
CONF_EDI = (bytes.fromhex("89ff"), bytes.fromhex("8bff"))
LEA_RDI = (bytes.fromhex("498d3c3e"), bytes.fromhex("4a8d3c37"))
CONF_ESI = (bytes.fromhex("89f6"), bytes.fromhex("8bf6"))
LEA_RSI = (bytes.fromhex("498d3436"), bytes.fromhex("4a8d3436"))
PUSH_R11, POP_R11, RET = bytes.fromhex("4153"), bytes.fromhex("415b"), b"\xc3"
JMP_R11, CALL_R11 = bytes.fromhex("41ffe3"), bytes.fromhex("41ffd3")
# String instructions: opcode, with %rsi, with %rdi.
_STRINGS = ((0xA4, True, True), (0xA5, True, True), (0xAA, False, True), (0xAB, False, True),
            (0xAC, True, False), (0xAD, True, False), (0xA6, True, True), (0xA7, True, True),
            (0xAE, False, True), (0xAF, False, True))
_CC = range(16)


@dataclass(frozen=True)
class Candidate:
    """A generated sequence: its code (at image offset CODE_OFFSET) and where to start it."""

    code: bytes
    mode: str
    start: int = 0


@dataclass
class _Item:
    """Bytes of one instruction or group; `branch` items get their rel field in pass 2."""

    raw: bytes
    interior: int = 0  # offset of the group's 2nd member (a branch target the verifier refuses)
    gap: int = 0  # data mode: padding before the item (code+data pads to bundles instead)
    branch: tuple[int, str] | None = None  # (rel size, target choice) for direct branches
    target_seed: int = 0


@functools.cache
def _table() -> tuple[list[CodeT], list[CodeT]]:
    """Legacy and VEX 64-bit encoding forms, split into those the allowlist names and the
    rest."""
    allowed_mnemonics, simd_features, simd_denied = _allowlist()
    preferred: list[CodeT] = []
    other: list[CodeT] = []
    for name in dir(C):
        value = getattr(C, name)
        if name.startswith("_") or not isinstance(value, int):
            continue
        code = cast("CodeT", value)  # iced-x86's Code is a module of ints, typed as an enum
        try:
            info = ix.OpCodeInfo(code)
        except ValueError:
            continue
        vex = info.encoding == ix.EncodingKind.VEX
        if not (info.is_instruction and info.mode64
                and (info.encoding == ix.EncodingKind.LEGACY or vex)) \
                or not set(info.op_kinds()) <= _SUPPORTED:
            continue
        features = set(ix.Instruction.create(code).cpuid_features())
        if vex and not features <= rules.VEX_FEATURES:
            other.append(code)
        elif info.mnemonic in allowed_mnemonics or (features and features <= simd_features | (
                rules.VEX_FEATURES if vex else set()) and info.mnemonic not in simd_denied):
            preferred.append(code)
        else:
            other.append(code)
    return sorted(preferred), sorted(other)


@functools.cache
def _forms(mode: str) -> tuple[list[CodeT], list[CodeT]]:
    """The table split by experiment: forms of which one of a few random instances passes the
    verifier on its own (most of what a sequence is made of), and the rest (drawn rarely:
    they test that the verifier refuses them)."""
    preferred, other = _table()
    probe = Generator(0x5EED)
    passing, failing = [], list(other)
    for code in preferred:
        for _ in range(8):
            raw = probe._encode(code)
            if raw and verifier.verify_code(raw, code_offset=CODE_OFFSET,
                                            image_size=oracle.IMAGE_SIZE, isolation=mode,
                                            level=LEVEL).ok:
                passing.append(code)
                break
        else:
            failing.append(code)
    return passing, sorted(failing)


def _allowlist() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """The verifier's allowlist (it only weights forms: the verifier still decides)."""
    return rules.ALLOWED_MNEMONICS, rules.SIMD_FEATURES, rules.SIMD_DENIED


@functools.cache
def _vex_forms(mode: str) -> list[CodeT]:
    """The VEX forms that pass on their own (AVX, AVX2, FMA, F16C, BMI1/2)."""
    return [c for c in _forms(mode)[0] if ix.OpCodeInfo(c).encoding == ix.EncodingKind.VEX]


@functools.cache
def _esp_forms() -> list[CodeT]:
    """Forms whose first operand is a 32-bit register: candidates for a write to %esp."""
    r32 = {K.R32_REG, K.R32_OR_MEM, K.R32_OPCODE, K.R32_RM}
    return [c for c in _table()[0] if ix.OpCodeInfo(c).op_count
            and ix.OpCodeInfo(c).op_kind(0) in r32]


_BIT_STRING_FORMS = [(n, getattr(C, f"{m}_RM{n}_R{n}")) for m in ("BT", "BTS", "BTR", "BTC")
                     for n in (16, 32, 64)]


class Generator:
    """Draws candidates and start states from one seeded random stream (reproducible)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mode = abi.DEFAULT_ISOLATION  # of the candidate being built
        self.encoder = ix.Encoder(64)
        self._items: dict[str, list[tuple[int, Callable[[], _Item]]]] = {
            "code+data": [(50, self._form), (6, self._esp_group), (5, self._string_group),
                          (6, self._masked_branch), (4, self._return_group),
                          (8, self._direct_branch), (2, self._runtime_call), (5, self._stack),
                          (2, self._raw), (2, self._fragment), (1, self._trap),
                          (4, self._bit_string), (4, self._vex_variant)],
            "data": [(55, self._form), (6, self._esp_group), (5, self._string_group),
                     (8, self._direct_branch), (2, self._runtime_call), (5, self._stack),
                     (2, self._raw), (2, self._fragment), (1, self._trap),
                     (4, self._bit_string), (4, self._vex_variant)],
        }

    # --- sequences ---------------------------------------------------------------------------

    def candidate(self, mode: str, verify: Callable[[Candidate], Verdict],
                  repairs: int = REPAIRS) -> tuple[Candidate, Verdict, int]:
        """A candidate, its verdict and how many were verified to get it: a rejected sequence
        loses the item the verifier named and is laid out again (up to `repairs` times), so
        that most of what is generated ends up running."""
        rng = self.rng
        self.mode = mode
        makers = self._items[mode]
        weights = [w for w, _ in makers]
        items = [rng.choices(makers, weights)[0][1]()
                 for _ in range(rng.randint(1, MAX_ITEMS))]
        if mode == "data":
            for item in items:
                item.gap = rng.randint(1, 3) if rng.random() < 0.05 else 0
        mutation = rng.getrandbits(32) if rng.random() < 0.1 else None
        start_at = rng.random() if mode == "code+data" and rng.random() < 0.2 else 0.0
        attempt = 0
        while attempt <= repairs:
            attempt += 1
            code, starts = self._layout(items, bundled=mode == "code+data")
            if mutation is not None:
                code = self._mutate(code, mutation)
            code = code[:oracle.MAX_CODE]
            start = int(start_at * (len(code) // abi.BUNDLE_SIZE)) * abi.BUNDLE_SIZE
            candidate = Candidate(code, mode, start)
            verdict = verify(candidate)
            if verdict.ok or mutation is not None or verdict.address is None or len(items) < 2:
                break
            del items[max(bisect.bisect_right(starts, verdict.address - CODE_OFFSET) - 1, 0)]
        return candidate, verdict, attempt

    def _layout(self, items: list[_Item], bundled: bool) -> tuple[bytes, list[int]]:
        starts, pads, pos = [], [], 0
        for item in items:
            room = -pos % abi.BUNDLE_SIZE
            pad = (room if len(item.raw) > room else 0) if bundled else item.gap
            pads.append(pad)
            pos += pad
            starts.append(pos)
            pos += len(item.raw)
        end = pos
        out = bytearray()
        for item, pad, at in zip(items, pads, starts, strict=True):
            out += _nops(pad)
            raw = item.raw
            if item.branch:
                size, choice = item.branch
                rng = random.Random(item.target_seed)
                target = self._target(choice, rng, items, starts, end)
                rel = target - (at + len(raw))
                lo, hi = -(1 << (8 * size - 1)), 1 << (8 * size - 1)
                if not lo <= rel < hi:
                    rel = rng.randrange(lo, hi)
                raw = raw[:-size] + (rel % (1 << (8 * size))).to_bytes(size, "little")
            out += raw
        return bytes(out), starts

    def _target(self, choice: str, rng: random.Random, items: list[_Item], starts: list[int],
                end: int) -> int:
        """A branch target (code-relative) of the kind the item asked for."""
        k = rng.randrange(len(items))
        if choice == "item":
            return starts[k]
        if choice == "interior" and items[k].interior:
            return starts[k] + items[k].interior
        if choice == "entry":
            return rng.choice((abi.RT_SYSCALL_OFFSET, abi.RT_EXIT_OFFSET) * 3
                              + (rng.randrange(abi.RT_PAGE_SIZE),)) - CODE_OFFSET
        if choice == "end":
            return end
        if choice == "byte":
            return rng.randrange(max(end, 1))
        return rng.randrange(-CODE_OFFSET - 64, end + 4096)

    def _mutate(self, code: bytes, seed: int) -> bytes:
        rng = random.Random(seed)
        out = bytearray(code)
        for _ in range(rng.randint(1, 3)):
            if not out:
                break
            i = rng.randrange(len(out))
            op = rng.randrange(4)
            if op == 0:
                out[i] = rng.randrange(256)
            elif op == 1:
                out[i] ^= 1 << rng.randrange(8)
            elif op == 2:
                out.insert(i, rng.choice(_LEGACY + bytes(range(0x40, 0x50))))
            else:
                del out[i]
        return bytes(out)

    # --- items -------------------------------------------------------------------------------

    def _form(self, codes: list[CodeT] | None = None) -> _Item:
        preferred, other = _forms(self.mode)
        rng = self.rng
        for _ in range(20):
            pool = codes or (preferred if rng.random() < 0.98 else other)
            raw = self._encode(rng.choice(pool))
            if raw:
                return _Item(self._prefix_noise(raw))
        return _Item(b"\x90")

    def _encode(self, code: CodeT, first: RegisterT | None = None) -> bytes | None:
        """One instruction of form `code` with random operands (first: op0's register)."""
        rng = self.rng
        info = ix.OpCodeInfo(code)
        ins = ix.Instruction()
        ins.code = code
        memory_done = False
        try:
            for i, kind in enumerate(info.op_kinds()):
                if i == 0 and first is not None:
                    ins.set_op_kind(0, OK.REGISTER)
                    ins.set_op_register(0, first)
                elif kind in _MAY_BE_MEMORY and not memory_done and rng.random() < 0.5 \
                        or kind in (K.MEM, K.MEM_OFFS):
                    ins.set_op_kind(i, OK.MEMORY)
                    self._memory(ins, kind == K.MEM_OFFS)
                    memory_done = True
                elif kind in _REG_KINDS:
                    ins.set_op_kind(i, OK.REGISTER)
                    ins.set_op_register(i, self._register_operand(_REG_KINDS[kind]))
                elif kind in _FIXED_REG:
                    ins.set_op_kind(i, OK.REGISTER)
                    ins.set_op_register(i, _FIXED_REG[kind])
                elif kind in _IMM:
                    op_kind, bits = _IMM[kind]
                    ins.set_op_kind(i, op_kind)
                    value = 1 if bits == 0 else self._immediate(bits)
                    if bits == 64:
                        ins.set_immediate_u64(i, value % (1 << 64))
                    else:
                        ins.set_immediate_i32(i, value)
                elif kind in _BRANCH:
                    ins.set_op_kind(i, _BRANCH[kind])
                    target = CODE_OFFSET + rng.randrange(64)
                    if _BRANCH[kind] == OK.NEAR_BRANCH64:
                        ins.near_branch64 = target
                    elif _BRANCH[kind] == OK.NEAR_BRANCH32:
                        ins.near_branch32 = target
                    else:
                        ins.near_branch16 = target
                elif kind in _STRING:
                    ins.set_op_kind(i, _STRING[kind])
                    ins.memory_base = R.RDI if kind == K.ES_RDI else R.RSI
            if info.can_use_rep_prefix and rng.random() < 0.5:
                ins.has_rep_prefix = True
            elif info.can_use_repne_prefix and rng.random() < 0.2:
                ins.has_repne_prefix = True
            if info.can_use_lock_prefix and rng.random() < (0.3 if memory_done else 0.02):
                ins.has_lock_prefix = True
            self.encoder.encode(ins, CODE_OFFSET)
        except ValueError:
            return None
        return self.encoder.take_buffer()

    def _memory(self, ins: ix.Instruction, moffs: bool) -> None:
        rng = self.rng
        r = rng.random()
        ins.segment_prefix = R.GS
        if moffs:
            ins.memory_base = R.NONE
            ins.memory_displ_size = 4 if r < 0.8 else 8
            ins.memory_displacement = rng.getrandbits(32 if r < 0.8 else 64)
            if r > 0.9:
                ins.segment_prefix = rng.choice(_CLASSES["SEG"])
            return
        if r < 0.75:  # the confined form: %gs, 32-bit base and index
            base = rng.choice(_GPR[32] + [R.NONE] * 3)
            index = rng.choice([g for g in _GPR[32] if g != R.ESP] + [R.NONE] * 6)
        elif r < 0.96:  # %rip-relative, mostly into the image
            ins.segment_prefix = R.NONE if rng.random() < 0.9 else R.GS
            ins.memory_base = R.RIP
            ins.memory_displ_size = 8
            ins.memory_displacement = rng.choice((
                rng.randrange(oracle.IMAGE_SIZE), rng.randrange(oracle.IMAGE_SIZE - 64,
                                                                oracle.IMAGE_SIZE + 64),
                rng.randrange(-(1 << 31), 1 << 31) % (1 << 64)))
            return
        else:  # unconfined: 64-bit registers, other segments, no segment
            base = rng.choice(_GPR[64] + _GPR[32] + [R.NONE])
            index = rng.choice([g for g in _GPR[64] if g != R.RSP] + [R.NONE] * 4)
            if (base in _GPR[32]) != (index in _GPR[32]) and index != R.NONE:
                index = R.NONE
            ins.segment_prefix = rng.choice(_CLASSES["SEG"] + [R.NONE, R.GS])
        ins.memory_base = base
        ins.memory_index = index
        ins.memory_index_scale = rng.choice((1, 2, 4, 8))
        disp = rng.choice((0, 0, rng.randrange(-128, 128), rng.randrange(-(1 << 31), 1 << 31),
                           0x7FFFFFFF, -1, -(1 << 31)))
        ins.memory_displacement = disp % (1 << 64)
        ins.memory_displ_size = 0 if disp == 0 and rng.random() < 0.7 \
            else 1 if -128 <= disp < 128 else 4

    def _register_operand(self, choices: list[RegisterT]) -> RegisterT:
        """Mostly not %rsp or %r14 (writing them is refused but for the forms that have their
        own items), so that a sequence is not rejected for its least interesting operand."""
        rng = self.rng
        while True:
            reg = rng.choice(choices)
            if reg not in _RSP_R14 or rng.random() < 0.05:
                return reg

    def _immediate(self, bits: int) -> int:
        rng = self.rng
        value = rng.choice((0, 1, -1, rng.getrandbits(bits), rng.randrange(-128, 128),
                            -abi.BUNDLE_SIZE, 1 << (bits - 1)))
        half = 1 << (bits - 1)
        if bits == 64:
            return value
        value %= 1 << bits
        if bits == 32:
            return value - (1 << 32) if value >= half else value
        return value - (1 << bits) if value >= half else value

    def _prefix_noise(self, raw: bytes) -> bytes:
        """Sometimes: permute, duplicate or add legacy prefixes, also after a REX byte."""
        rng = self.rng
        if rng.random() > 0.06:
            return raw
        i = 0
        while i < len(raw) and raw[i] in _LEGACY:
            i += 1
        legacy, rest = bytearray(raw[:i]), raw[i:]
        rex = b""
        if rest and 0x40 <= rest[0] <= 0x4F:
            rex, rest = rest[:1], rest[1:]
        after_rex = bytearray()
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(5)
            if op == 0:
                rng.shuffle(legacy)
            elif op == 1 and legacy:
                legacy.insert(rng.randrange(len(legacy) + 1), rng.choice(legacy))
            elif op == 2:
                legacy.insert(rng.randrange(len(legacy) + 1), rng.choice(_LEGACY))
            elif op == 3:
                after_rex.append(rng.choice(_LEGACY))
            else:
                rex = bytes([rng.randrange(0x40, 0x50)]) + rex
        if after_rex and not rex:
            rex = bytes([rng.randrange(0x40, 0x50)])
        return bytes(legacy) + rex + bytes(after_rex) + rest

    def _esp_group(self) -> _Item:
        """A 32-bit write to %esp by any form with a 32-bit first operand, then the lea."""
        rng = self.rng
        raw = None
        while raw is None:
            if rng.random() < 0.3:  # the other operand order: xchg reg, esp and friends
                raw = self._encode(rng.choice((C.XCHG_RM32_R32, C.XCHG_R32_EAX, C.MOV_R32_RM32,
                                               C.XADD_RM32_R32, C.CMPXCHG_RM32_R32)))
                if raw is not None:
                    raw = self._encode_with(raw, R.ESP)
            else:
                raw = self._encode(rng.choice(_esp_forms()), first=R.ESP)
        return _Item(raw + rng.choice(LEA_RSP), interior=len(raw))

    def _encode_with(self, raw: bytes, register: RegisterT) -> bytes | None:
        """`raw` re-encoded with its last register operand replaced by `register`."""
        ins = next(iter(ix.Decoder(64, raw, ip=CODE_OFFSET)))
        for i in reversed(range(ins.op_count)):
            if ins.op_kind(i) == OK.REGISTER:
                ins.set_op_register(i, register)
                break
        try:
            self.encoder.encode(ins, CODE_OFFSET)
        except ValueError:
            return None
        return self.encoder.take_buffer()

    def _string_group(self) -> _Item:
        rng = self.rng
        opcode, si, di = rng.choice(_STRINGS)
        prefix = bytes(rng.choice(((), (0xF3,), (0xF2,), (0x66,), (0xF3, 0x48), (0x48,))))
        if rng.random() < 0.1:
            prefix = bytes([rng.choice(_LEGACY)]) + prefix
        head = b""
        if di:
            head += rng.choice(CONF_EDI) + rng.choice(LEA_RDI)
        if si:
            head += rng.choice(CONF_ESI) + rng.choice(LEA_RSI)
        return _Item(head + prefix + bytes([opcode]), interior=2)

    def _load_r11(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return POP_R11
        if r < 0.6:  # a bundle of the sequence, as an absolute window offset
            offset = oracle.CODE_ADDRESS_OFFSET + rng.randrange(32) * abi.BUNDLE_SIZE \
                + rng.randrange(-8, 8)
            return b"\x41\xbb" + (offset % (1 << 32)).to_bytes(4, "little")  # mov r11d, imm32
        source = rng.randrange(16)
        return bytes([0x49 | (0x04 if source >= 8 else 0), 0x89,
                      0xC3 | (source & 7) << 3])  # mov r11, reg

    def _masked_branch(self) -> _Item:
        rng = self.rng
        load = self._load_r11() if rng.random() < 0.8 else b""
        mask = rng.choice(AND_R11)
        body = mask + rng.choice(OR_R11) + rng.choice((JMP_R11, CALL_R11))
        return _Item(load + body, interior=len(load) + len(mask))

    def _return_group(self) -> _Item:
        rng = self.rng
        load = POP_R11 if rng.random() < 0.8 else self._load_r11()
        mask = rng.choice(AND_R11)
        return _Item(load + mask + rng.choice(OR_R11) + PUSH_R11 + RET,
                     interior=len(load) + len(mask))

    def _direct_branch(self) -> _Item:
        rng = self.rng
        cc = rng.choice(_CC)
        opcode, size = rng.choice(((b"\xeb", 1), (b"\xe9", 4), (b"\xe8", 4),
                                   (bytes([0x70 | cc]), 1), (bytes([0x0F, 0x80 | cc]), 4),
                                   (b"\xe2", 1), (b"\xe1", 1), (b"\xe0", 1), (b"\xe3", 1)))
        prefix = b""
        if rng.random() < 0.1:  # prefixes on branches, before and after REX
            prefix = bytes(rng.choice(_LEGACY) for _ in range(rng.randint(0, 2)))
            prefix += bytes([rng.randrange(0x40, 0x50)])
            prefix += bytes(rng.choice(b"\x66\x66\x67\xf2\xf3\x2e\x3e")
                            for _ in range(rng.randint(0, 2)))
        choice = rng.choices(("item", "interior", "entry", "byte", "end", "any"),
                             (60, 6, 10, 6, 2, 5))[0]
        return _Item(prefix + opcode + bytes(size), branch=(size, choice),
                     target_seed=rng.getrandbits(32))

    def _runtime_call(self) -> _Item:
        rng = self.rng
        opcode = rng.choice((b"\xe8", b"\xe9"))
        return _Item(opcode + bytes(4), branch=(4, "entry"), target_seed=rng.getrandbits(32))

    def _bit_string(self) -> _Item:
        """bt/bts/btr/btc with a register bit offset and a memory operand: their access is
        operand + offset/8, a reach no decoder reports (a rule of its own in the verifier)."""
        rng = self.rng
        for _ in range(20):
            n, code = rng.choice(_BIT_STRING_FORMS)
            ins = ix.Instruction()
            ins.code = code
            ins.set_op_kind(0, OK.MEMORY)
            rip = rng.random() < 0.5  # half %rip-relative: the form that once escaped
            for _ in range(50):
                self._memory(ins, False)
                if (ins.memory_base == R.RIP) == rip:
                    break
            ins.set_op_kind(1, OK.REGISTER)
            ins.set_op_register(1, self._register_operand(_GPR[n]))
            try:
                self.encoder.encode(ins, CODE_OFFSET)
            except ValueError:
                continue
            return _Item(self._prefix_noise(self.encoder.take_buffer()))
        return _Item(b"\x90")

    def _vex_variant(self) -> _Item:
        """A VEX form with its VEX fields changed as raw bits: L, W, vvvv (%rsp and %r14
        too), R/X/B, pp, the opcode map, the 2-byte form turned into the 3-byte one and back,
        a prefix before it. iced-x86's Encoder only writes valid fields; the CPU decides what
        the others do, and whatever the verifier accepts of them runs."""
        rng = self.rng
        for _ in range(20):
            raw = self._encode(rng.choice(_vex_forms(self.mode)))
            if raw:
                break
        else:
            return _Item(b"\x90")
        out = bytearray(raw)
        i = 0
        while out[i] in _LEGACY:
            i += 1
        for _ in range(rng.randint(1, 2)):
            two = out[i] == 0xC5
            fields = out[i + 1] if two else out[i + 2]  # W/R, vvvv, L, pp
            op = rng.randrange(8)
            if op == 0:
                fields ^= 0x04  # L
            elif op == 1:
                fields = fields & 0x87 | (rng.choice((4, 14, rng.randrange(16))) ^ 15) << 3
            elif op == 2:
                fields = fields & 0xFC | rng.randrange(4)  # pp
            elif op == 3:
                fields ^= 0x80  # R (2-byte) or W (3-byte)
            elif op == 4 and not two:
                out[i + 1] ^= 0x20 << rng.randrange(3)  # R/X/B
            elif op == 5 and not two:
                out[i + 1] = out[i + 1] & 0xE0 | rng.choice((1, 2, 3, rng.randrange(32)))
            elif op == 6:  # the other form of the same fields, where one exists
                if two:
                    out[i:i + 2] = bytes((0xC4, fields & 0x80 | 0x61, fields & 0x7F))
                    continue
                if out[i + 1] & 0x7F == 0x61 and not fields & 0x80:
                    out[i:i + 3] = bytes((0xC5, out[i + 1] & 0x80 | fields))
                    continue
            else:
                out.insert(rng.randrange(i + 1), rng.choice(_LEGACY + bytes(range(0x40, 0x50))))
                i += 1
                continue
            out[i + 1 if two else i + 2] = fields
        return _Item(bytes(out))

    def _stack(self) -> _Item:
        rng = self.rng
        r = rng.randrange(8)
        reg = rng.randrange(16)
        rex = b"\x41" if reg >= 8 else b""
        if r == 0:
            return _Item(rex + bytes([0x50 | reg & 7]))  # push
        if r == 1:
            return _Item(rex + bytes([0x58 | reg & 7]))  # pop
        if r == 2:
            return _Item(bytes.fromhex("4883e4") + bytes([rng.choice((0xF0, 0xE0, 0x80, 0xC0))]))
        if r == 3:
            return _Item(b"\x9c")  # pushfq
        if r == 4:
            return _Item(b"\x6a" + bytes([rng.randrange(256)]))  # push imm8
        return self._form([C.PUSH_RM64, C.POP_RM64, C.PUSH_R64, C.POP_R64, C.PUSHQ_IMM32,
                           C.AND_RM64_IMM8])

    def _raw(self) -> _Item:
        rng = self.rng
        return _Item(bytes(rng.randrange(256) for _ in range(rng.randint(1, 15))))

    def _fragment(self) -> _Item:
        """A group member out of its group (what the verifier must refuse or confine)."""
        rng = self.rng
        return _Item(rng.choice((
            rng.choice(LEA_RSP), rng.choice(AND_R11) + rng.choice(OR_R11),
            PUSH_R11 + RET, RET, rng.choice(LEA_RDI) + b"\xab", rng.choice(OR_R11) + JMP_R11,
            JMP_R11, rng.choice(AND_R11) + rng.choice(OR_R11) + PUSH_R11,
            b"\x89\xc4", rng.choice(CONF_EDI) + b"\x48\xab")))

    def _trap(self) -> _Item:
        return _Item(self.rng.choice((b"\xcc", b"\x0f\x0b")))

    # --- start states ------------------------------------------------------------------------

    def state(self) -> tuple[tuple[int, ...], int, int]:
        """(regs, rel_mask, rflags) for oracle.Sample."""
        rng = self.rng
        regs, mask = [], 0
        for i in range(16):
            value, relative = self._register()
            if i == 4:  # %rsp: inside the window's stack, now and then near an edge
                value, relative = self._stack_pointer(), True
            regs.append(value)
            mask |= relative << i
        flags = sum(bit for bit in (0x1, 0x4, 0x10, 0x40, 0x80, 0x800) if rng.random() < 0.5)
        if rng.random() < 0.1:
            flags |= 0x400  # DF
        return tuple(regs), mask, flags

    def _register(self) -> tuple[int, bool]:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return (0 if rng.random() < 0.35 else rng.randrange(65)), False
        if r < 0.4:
            return self._window_offset(), False
        if r < 0.6:
            return self._window_offset(), True
        if r < 0.7:
            return (oracle.CODE_ADDRESS_OFFSET + rng.randrange(64) * abi.BUNDLE_SIZE
                    + rng.choice((0, 0, 0, rng.randrange(32)))), True
        if r < 0.8:
            return rng.getrandbits(64), False
        if r < 0.85:
            return rng.choice((0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, (1 << 64) - 1, 1 << 63,
                               0xFFFF, 0xFFFFFFE0, 1 << 32)), False
        if r < 0.93:  # a neighbour's distance, in bytes or in bits (bt* offsets count bits)
            distance = rng.choice((1, 2, 3, -1, -2)) << rng.choice((32, 35))
            return (distance + rng.randrange(1 << 20)) % (1 << 64), False
        return rng.choice((1 << 47, (1 << 48) - 1, 0x8000_0000_0000_1000,
                           rng.getrandbits(16) << 48 | rng.getrandbits(32))), False

    def _window_offset(self) -> int:
        rng = self.rng
        image = abi.IMAGE_WINDOW_OFFSET
        return rng.choice((
            image + rng.randrange(oracle.CODE_SIZE),
            image + rng.randrange(oracle.CODE_SIZE, oracle.RW_END),
            abi.WINDOW_SIZE - abi.GUARD_SIZE - rng.randrange(1, oracle.TOP_SIZE),
            rng.randrange(abi.WINDOW_SIZE)))

    def _stack_pointer(self) -> int:
        rng = self.rng
        image = abi.IMAGE_WINDOW_OFFSET
        middle = image + (oracle.RW_END + oracle.CODE_SIZE) // 2
        r = rng.random()
        if r < 0.85:
            sp = middle + rng.randrange(-16384, 16384)
            return sp & ~7 if rng.random() < 0.9 else sp
        return rng.choice((image + oracle.CODE_SIZE + 8 * rng.randrange(4),
                           image + oracle.RW_END - 8 * rng.randrange(1, 4),
                           abi.WINDOW_SIZE - abi.GUARD_SIZE - 8 * rng.randrange(1, 4)))


def _nops(n: int) -> bytes:
    """Padding the way the assembler pads bundles: multi-byte nops."""
    out = b""
    while n > 0:
        k = min(n, len(_NOP_FORMS))
        out += _NOP_FORMS[k - 1]
        n -= k
    return out


_NOP_FORMS = [bytes.fromhex(h) for h in (
    "90", "6690", "0f1f00", "0f1f4000", "0f1f440000", "660f1f440000", "0f1f8000000000",
    "0f1f840000000000", "660f1f840000000000", "662e0f1f840000000000")]
