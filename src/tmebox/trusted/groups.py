"""The unsplittable groups of docs/design.md, as exact encoding forms.

A group confines a register and then uses it: `mov esp, eax; lea rsp, [rsp + r14]`, the string
preludes, the masked branch and the return. Its members are recognised by iced-x86 `Code` plus
operand constraints, never by mnemonic and register pattern: the instruction that zero-extends
a register must be one that *always* writes all 64 bits of it (`bsf`, `bsr`, `cmpxchg` and
`cmov` may leave it unwritten, and the lea would then add the window base twice).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import iced_x86 as ix

from tmebox.trusted import abi

__all__ = ["ESP_WRITE_FORMS", "GROUPS", "Role", "group_rule", "member_role"]

C, R = ix.Code, ix.Register


class Role(enum.IntEnum):
    """What an instruction is inside a group; PLAIN: not a group member."""

    PLAIN = 0
    ESP_WRITE = enum.auto()
    LEA_RSP = enum.auto()
    CONF_EDI = enum.auto()
    LEA_RDI = enum.auto()
    CONF_ESI = enum.auto()
    LEA_RSI = enum.auto()
    AND_R11 = enum.auto()
    OR_R11 = enum.auto()
    PUSH_R11 = enum.auto()
    STRING_DI = enum.auto()
    STRING_SI = enum.auto()
    STRING_DI_SI = enum.auto()
    BRANCH_R11 = enum.auto()
    RET_R11 = enum.auto()


# Each group's last role, the roles that must immediately precede it, and the rule that owns it.
GROUPS: dict[Role, tuple[tuple[Role, ...], str]] = {
    Role.LEA_RSP: ((Role.ESP_WRITE,), "stack-pointer"),
    Role.STRING_DI: ((Role.CONF_EDI, Role.LEA_RDI), "string-instruction"),
    Role.STRING_SI: ((Role.CONF_ESI, Role.LEA_RSI), "string-instruction"),
    Role.STRING_DI_SI: ((Role.CONF_EDI, Role.LEA_RDI, Role.CONF_ESI, Role.LEA_RSI),
                        "string-instruction"),
    Role.BRANCH_R11: ((Role.AND_R11, Role.OR_R11), "indirect-branch"),
    Role.RET_R11: ((Role.AND_R11, Role.OR_R11, Role.PUSH_R11), "return"),
}
GROUP_TEXT = {
    Role.LEA_RSP: "a 32-bit write to %esp",
    Role.BRANCH_R11: "and $-32, %r11d; or %r14, %r11",
    Role.RET_R11: "and $-32, %r11d; or %r14, %r11; push %r11",
}
STRING_TEXT = "mov edi,edi; lea rdi,[r14+rdi] / mov esi,esi; lea rsi,[r14+rsi]"


def group_rule(last: Role) -> tuple[str, str]:
    """(rule, what must precede) of the group that `last` ends."""
    return GROUPS[last][1], GROUP_TEXT.get(last, STRING_TEXT)


def _codes(names: Iterable[str]) -> frozenset[int]:
    return frozenset(getattr(C, n) for n in names)


# 32-bit writes of a register that write all 64 bits whatever the operand values (the 32-bit
# ALU, mov and lea forms zero-extend unconditionally; compare, test, shifts by a count that may
# be 0, bsf/bsr, cmpxchg, cmov and xchg-with-memory are not here on purpose).
_ALU32 = [f"{op}_{form}" for op in ("ADD", "SUB", "AND", "OR", "XOR")
          for form in ("RM32_IMM8", "RM32_IMM32", "RM32_R32", "R32_RM32")]
ESP_WRITE_FORMS = _codes(["MOV_R32_RM32", "MOV_RM32_R32", "MOV_R32_IMM32", "LEA_R32_M", *_ALU32])
_MOV32 = _codes(["MOV_R32_RM32", "MOV_RM32_R32"])
_AND32_IMM = _codes(["AND_RM32_IMM8", "AND_RM32_IMM32"])
_OR64 = _codes(["OR_R64_RM64", "OR_RM64_R64"])
_REGISTER = ix.OpKind.REGISTER


def _registers(ins: ix.Instruction) -> tuple[int, ...] | None:
    """The operands if all are registers, else None."""
    if any(ins.op_kind(i) != _REGISTER for i in range(ins.op_count)):
        return None
    return tuple(ins.op_register(i) for i in range(ins.op_count))


def writes_all_of_esp(ins: ix.Instruction) -> bool:
    """A form in ESP_WRITE_FORMS whose destination (operand 0) is the register %esp."""
    return (ins.code in ESP_WRITE_FORMS and ins.op0_kind == _REGISTER
            and ins.op0_register == R.ESP)


def is_lea_r14(ins: ix.Instruction, raw: bytes, dest: int) -> bool:
    """Exactly `lea dest, [dest + r14*1]` (or `[r14 + dest*1]`), 64-bit, no legacy prefix.

    Any other address would not confine: a displacement can carry past the window's end, 32-bit
    addressing truncates the sum, another scale or register adds more than the base.
    """
    return (ins.code == C.LEA_R64_M and ins.op0_register == dest and 0x40 <= raw[0] <= 0x4F
            and {ins.memory_base, ins.memory_index} == {dest, R.R14}
            and ins.memory_index_scale == 1 and ins.memory_displacement == 0
            and ins.segment_prefix == R.NONE)


def member_role(ins: ix.Instruction, raw: bytes) -> Role:
    """The role of a group member that is an ordinary instruction on its own (else PLAIN)."""
    code = ins.code
    regs = _registers(ins)
    if code in _MOV32 and regs in ((R.EDI, R.EDI), (R.ESI, R.ESI)):
        return Role.CONF_EDI if regs == (R.EDI, R.EDI) else Role.CONF_ESI
    if code == C.LEA_R64_M:
        for dest, role in ((R.RDI, Role.LEA_RDI), (R.RSI, Role.LEA_RSI)):
            if is_lea_r14(ins, raw, dest):
                return role
    if code in _AND32_IMM and ins.op0_kind == _REGISTER and ins.op0_register == R.R11D \
            and ins.immediate(1) & 0xFFFFFFFF == abi.BUNDLE_MASK & 0xFFFFFFFF:
        return Role.AND_R11
    if code in _OR64 and regs == (R.R11, R.R14):
        return Role.OR_R11
    if code == C.PUSH_R64 and regs == (R.R11,):
        return Role.PUSH_R11
    return Role.PLAIN
