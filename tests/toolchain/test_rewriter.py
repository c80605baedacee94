"""Tests of the instrumenting assembly rewriter (tmebox.toolchain.rewriter).

Every output is assembled with GNU as; a small capstone checker (independent of the
rewriter's own parsing) decodes the object code and checks the forms of docs/design.md.
Set TMEBOX_UPDATE_GOLDEN=1 to rewrite the expected golden files (then review the diff).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import capstone
import pytest
from capstone import x86
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmebox.errors import RewriteError
from tmebox.toolchain.rewriter import rewrite_assembly
from tmebox.trusted.abi import (
    BUNDLE_SIZE,
    CODE_DATA_CFLAGS,
    COMMON_CFLAGS,
    RT_SYSCALL_SYMBOL,
    TP_SYMBOL,
)

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]
MODES = ("data", "code+data")
MODE_TAG = {"data": "data", "code+data": "cd"}
# capstone's EFLAGS detail bits that say an instruction changes a flag (not just reads it).
_EFLAGS_WRITES = 0
for _name in dir(x86):
    if _name.startswith("X86_EFLAGS_") and not _name.startswith("X86_EFLAGS_TEST_"):
        _EFLAGS_WRITES |= getattr(x86, _name)

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("gcc") is None,
                                reason="needs GNU as and gcc")


# -- helpers -------------------------------------------------------------------------

def assemble(text: str, tmp_path: Path, name: str = "t") -> Path:
    src = tmp_path / f"{name}.s"
    obj = tmp_path / f"{name}.o"
    src.write_text(text)
    r = subprocess.run(["as", "--64", "-o", str(obj), str(src)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, f"as failed:\n{r.stderr}\n--- input ---\n{text}"
    return obj


def code_sections(obj: Path) -> dict[str, bytes]:
    with obj.open("rb") as f:
        elf = ELFFile(f)
        return {s.name: s.data() for s in elf.iter_sections()
                if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_size"]}


def function_symbols(obj: Path) -> dict[str, tuple[str, int]]:
    with obj.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        out: dict[str, tuple[str, int]] = {}
        for sym in symtab.iter_symbols() if symtab else ():
            if sym["st_info"]["type"] == "STT_FUNC":
                out[sym.name] = (elf.get_section(sym["st_shndx"]).name, sym["st_value"])
        return out


_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CS.detail = True
_STRING = re.compile(r"^(?:rep[a-z]* )?(movs|stos|cmps|scas|lods)[bwdq]?$")
_STRING_OPCODES = frozenset((0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF))
_STACK_OPS = re.compile(r"(?:^|\s)(?:push|pop|call|ret|leave)")


@dataclass
class Insn:
    address: int
    size: int
    mnemonic: str
    op_str: str
    cs: capstone.CsInsn


def decode(code: bytes) -> list[Insn]:
    out = []
    end = 0
    for i in _CS.disasm(code, 0):
        out.append(Insn(i.address, i.size, i.mnemonic, i.op_str, i))
        end = i.address + i.size
    assert end == len(code), f"undecodable bytes at {end:#x}"
    return out


def check_code(code: bytes, mode: str) -> list[Insn]:
    """An independent re-statement of the design.md rules, applied to machine code."""
    insns = decode(code)
    cfi = mode == "code+data"
    for k, ins in enumerate(insns):
        c = ins.cs
        where = f"{ins.address:#x}: {ins.mnemonic} {ins.op_str}"
        prev = [(p.mnemonic, p.op_str) for p in insns[max(0, k - 4):k]]
        # Memory operands.
        m = _STRING.match(ins.mnemonic) if c.opcode[0] in _STRING_OPCODES else None
        if not (ins.mnemonic.startswith("nop") or ins.mnemonic == "lea" or m):
            for op in c.operands:
                if op.type != x86.X86_OP_MEM:
                    continue
                if op.mem.base == x86.X86_REG_RIP:
                    assert op.mem.segment == 0, where
                else:
                    assert op.mem.segment == x86.X86_REG_GS, where
                    assert c.addr_size == 4, where
        # String instructions: preceded by their confinement.
        if m:
            stem = m.group(1)
            need = []
            if stem in ("movs", "stos", "cmps", "scas"):
                need += [("mov", "edi, edi"), ("lea", "rdi, [r14 + rdi]")]
            if stem in ("movs", "cmps", "lods"):
                need += [("mov", "esi, esi"), ("lea", "rsi, [r14 + rsi]")]
            assert prev[len(prev) - len(need):] == need, where
            if cfi:
                start = insns[k - len(need)].address
                assert start // BUNDLE_SIZE == (ins.address + ins.size - 1) // BUNDLE_SIZE, where
        # Register writes.
        _, written = c.regs_access()
        wnames = {c.reg_name(r) for r in written}
        assert not wnames & {"r14", "r14d", "r14w", "r14b"}, where
        if (ins.mnemonic, ins.op_str) == ("lea", "rsp, [rsp + r14]"):
            assert insns[k - 1].op_str.startswith("esp,"), where
        elif wnames & {"rsp", "esp", "sp", "spl"} and not _STACK_OPS.search(ins.mnemonic):
            dest = ins.op_str.split(",")[0]
            if ins.mnemonic == "and" and dest == "rsp":
                imm = c.operands[1]
                assert imm.type == x86.X86_OP_IMM and imm.imm < 0, where
            else:
                assert dest == "esp", where
                nxt = insns[k + 1]
                assert (nxt.mnemonic, nxt.op_str) == ("lea", "rsp, [rsp + r14]"), where
                if cfi:
                    assert ins.address // BUNDLE_SIZE == nxt.address // BUNDLE_SIZE, where
        if ins.mnemonic == "leave":
            raise AssertionError(f"leave survived: {where}")
        if not cfi:
            continue
        # Bundles.
        assert ins.address % BUNDLE_SIZE + ins.size <= BUNDLE_SIZE, f"crosses a bundle: {where}"
        if ins.mnemonic.startswith("ret"):
            assert prev[-4:] == [("pop", "r11"), ("and", "r11d, 0xffffffe0"), ("or", "r11, r14"),
                                 ("push", "r11")], where
            assert insns[k - 4].address // BUNDLE_SIZE == ins.address // BUNDLE_SIZE, where
        if ins.mnemonic == "call":
            assert (ins.address + ins.size) % BUNDLE_SIZE == 0, f"call not at bundle end: {where}"
        if ins.mnemonic in ("call", "jmp") and c.operands[0].type != x86.X86_OP_IMM:
            assert ins.op_str == "r11", where
            assert prev[-2:] == [("and", "r11d, 0xffffffe0"), ("or", "r11, r14")], where
            start = insns[k - 2].address
            assert start // BUNDLE_SIZE == ins.address // BUNDLE_SIZE, where
    return insns


def check_object(obj: Path, mode: str) -> dict[str, list[Insn]]:
    out = {name: check_code(code, mode) for name, code in code_sections(obj).items()}
    if mode == "code+data":
        for name, (sec, value) in function_symbols(obj).items():
            assert value % BUNDLE_SIZE == 0, f"function {name} in {sec} at {value:#x}"
    return out


def rw(text: str, mode: str = "data", source: str = "t.s") -> str:
    return rewrite_assembly(text, isolation=mode, source=source)


def body(text: str, mode: str = "data") -> list[str]:
    """The rewritten lines, normalised: single spaces, `, ` between operands, none in parens."""
    lines = []
    for line in rw(text, mode).splitlines():
        s = re.sub(r"\s*,\s*", ", ", " ".join(line.split()))
        s = re.sub(r"\([^)]*\)", lambda m: m.group(0).replace(" ", ""), s)
        if s and not s.startswith(".bundle_align_mode"):
            lines.append(s)
    return lines


# -- golden files ----------------------------------------------------------------------

GOLDEN_INPUTS = sorted(p for p in GOLDEN.glob("*.s") if p.name.count(".") == 1)


def test_golden_inputs_exist() -> None:
    assert len(GOLDEN_INPUTS) >= 6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("src", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_golden(src: Path, mode: str, tmp_path: Path) -> None:
    out = rewrite_assembly(src.read_text(), isolation=mode, source=src.name)
    expected = src.with_name(f"{src.stem}.{MODE_TAG[mode]}.s")
    if os.environ.get("TMEBOX_UPDATE_GOLDEN"):
        expected.write_text(out)
    assert out == expected.read_text()
    check_object(assemble(out, tmp_path), mode)


# -- rule-by-rule -------------------------------------------------------------------

def test_memory_operand_forms() -> None:
    assert body("movq 8(%rdi), %rax") == ["movq %gs:8(%edi), %rax"]
    assert body("movslq (%rdx,%rax,4), %rax") == ["movslq %gs:(%edx,%eax,4), %rax"]
    assert body("movq foo+8(%rax), %rdx") == ["movq %gs:foo+8(%eax), %rdx"]
    assert body("movl foo, %eax") == ["addr32 movl %gs:foo, %eax"]
    assert body("movq .LC0(%rip), %rax") == ["movq .LC0(%rip), %rax"]
    assert body("leaq 8(%rdi,%rsi,2), %rax") == ["leaq 8(%rdi,%rsi,2), %rax"]
    assert body("movl %gs:8(%eax), %ecx") == ["movl %gs:8(%eax), %ecx"]
    assert body("movaps %xmm0, 16(%rsp)") == ["movaps %xmm0, %gs:16(%esp)"]
    assert body("nopw 0x0(%rax,%rax,1)") == ["nopw 0x0(%rax,%rax,1)"]
    # A register bit offset reaches past a %rip operand; %gs + 32 bits wraps it.
    assert body("btq %rdi, bits(%rip)") == ["leaq bits(%rip), %r11", "btq %rdi, %gs:(%r11d)"]
    assert body("btsl %esi, 4+bits(%rip)") == ["leaq 4+bits(%rip), %r11",
                                               "btsl %esi, %gs:(%r11d)"]
    assert body("btl $3, bits(%rip)") == ["btl $3, bits(%rip)"]


def test_stack_pointer_writes_both_modes() -> None:
    assert body("subq $4096, %rsp") == ["subl $4096, %esp", "leaq (%rsp,%r14), %rsp"]
    assert body("movq 8(%rdi), %rsp") == ["movl %gs:8(%edi), %esp", "leaq (%rsp,%r14), %rsp"]
    assert body("leaq -16(%rbp), %rsp") == ["leal -16(%rbp), %esp", "leaq (%rsp,%r14), %rsp"]
    assert body("leave") == ["movl %ebp, %esp", "leaq (%rsp,%r14), %rsp", "popq %rbp"]
    assert body("andq $-16, %rsp") == ["andq $-16, %rsp"]
    assert body("andq $16, %rsp") == ["andl $16, %esp", "leaq (%rsp,%r14), %rsp"]
    assert body("subq $40, %rsp", "code+data") == [
        ".bundle_lock", "subl $40, %esp", "leaq (%rsp,%r14), %rsp", ".bundle_unlock"]


def test_string_instruction_spellings() -> None:
    for text in ("rep movsb", "rep; movsb", "rep ; movsb", "rep\nmovsb", "REP MOVSB"):
        got = body(text)
        assert got[:4] == ["movl %edi, %edi", "leaq (%r14,%rdi), %rdi",
                           "movl %esi, %esi", "leaq (%r14,%rsi), %rsi"], text
        assert got[4].lower() == "rep movsb" and len(got) == 5, text
    assert body("stosq") == ["movl %edi, %edi", "leaq (%r14,%rdi), %rdi", "stosq"]
    assert body("lodsb") == ["movl %esi, %esi", "leaq (%r14,%rsi), %rsi", "lodsb"]
    assert body("movsd") [-1] == "movsl"
    assert body("movsd %xmm1, %xmm0") == ["movsd %xmm1, %xmm0"]
    assert body("movsbl (%rsi), %eax") == ["movsbl %gs:(%esi), %eax"]


@pytest.mark.parametrize("mode", MODES)
def test_confinement_preserves_flags(mode: str, tmp_path: Path) -> None:
    """leave, rsp moves and movs/stos/lods leave EFLAGS alone, so their rewrites must too:
    gcc keeps flags live across them (sqlite3Prepare: cmpb; rep stosq; rep stosq; jne)."""
    src = "\tleave\n\tmovq %rbp, %rsp\n\tmovq 8(%rdi), %rsp\n\trep movsb\n\trep stosq\n" \
          "\tlodsb\n\tmovsq\n"
    obj = assemble(rw(src, mode), tmp_path)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    code = code_sections(obj)[".text"]
    insns = list(md.disasm(code, 0))
    assert sum(i.size for i in insns) == len(code)
    assert [i for i in insns if i.mnemonic == "lea"], "no confining lea emitted"
    writers = [f"{i.mnemonic} {i.op_str}" for i in insns if i.eflags & _EFLAGS_WRITES]
    assert writers == []


def test_fs_forms() -> None:
    assert body("movq %fs:0, %rax") == [f"movq {TP_SYMBOL}(%rip), %rax"]
    assert body("movq %fs:0x28, %rdx") == [f"movq {TP_SYMBOL}(%rip), %r11",
                                            "movq %gs:0x28(%r11d), %rdx"]
    assert body("movl %fs:x@tpoff, %eax") == [f"movq {TP_SYMBOL}(%rip), %r11",
                                               "leaq x@tpoff(%r11), %r11",
                                               "movl %gs:(%r11d), %eax"]
    assert body("movl %fs:4(%rax), %eax") == [f"movq {TP_SYMBOL}(%rip), %r11",
                                               "movl %gs:4(%r11d,%eax,1), %eax"]


def test_syscall_and_calls() -> None:
    assert body("syscall") == [f"call {RT_SYSCALL_SYMBOL}"]
    cd = body("syscall", "code+data")
    assert cd[0] == ".bundle_lock" and cd[-2:] == [f"call {RT_SYSCALL_SYMBOL}", ".bundle_unlock"]
    assert body("call *%rax") == ["call *%rax"]
    assert body("call *8(%rax)") == ["call *%gs:8(%eax)"]
    cd = body("call *8(%rax)", "code+data")
    assert cd[0] == "movq %gs:8(%eax), %r11"
    assert cd[-4:] == ["andl $-32, %r11d", "orq %r14, %r11", "call *%r11", ".bundle_unlock"]
    assert body("ret", "data") == ["ret"]
    assert body("ret", "code+data") == [".bundle_lock", "popq %r11", "andl $-32, %r11d",
                                        "orq %r14, %r11", "pushq %r11", "ret",
                                        ".bundle_unlock"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 40])
def test_call_groups_end_on_bundle_ends(n: int, tmp_path: Path) -> None:
    # Random-length instructions before each call: the padding must still line up.
    lines = ["\t.text", "\t.globl f", "\t.type f,@function", "f:"]
    fillers = ["movq 8(%rdi), %rax", "addl $1, %eax", "movabsq $1, %rax", "xorl %eax, %eax",
               "movl $0x12345678, 0x100(%rdi,%rsi,8)", "call g", "call *%rax", "call *8(%rbx)",
               "syscall", "subq $8, %rsp", "rep movsb", "jmp *%rcx"]
    for i in range(n):
        lines += [f"\t{fillers[(i * 7) % len(fillers)]}" for _ in range(i % 4)]
        lines.append(f"\t{fillers[5 + i % 4]}")
    lines.append("\tret")
    out = rw("\n".join(lines), "code+data")
    insns = check_object(assemble(out, tmp_path), "code+data")[".text"]
    calls = [i for i in insns if i.mnemonic == "call"]
    assert len(calls) >= n
    assert all((c.address + c.size) % BUNDLE_SIZE == 0 for c in calls)


def test_function_labels_are_aligned(tmp_path: Path) -> None:
    text = "\t.text\n\tnop\n\t.type f,@function\nf:\n\tnop\n\tnop\n\t.type g,@function\ng:\n\tret\n"
    obj = assemble(rw(text, "code+data"), tmp_path)
    syms = function_symbols(obj)
    assert syms["f"][1] == 32 and syms["g"][1] == 64


def test_data_sections_pass_through() -> None:
    text = ("\t.section .rodata\nx:\n\t.quad 1\n\tmovq (%rax), %rbx\n"
            "\t.text\n\tmovq (%rax), %rbx\n")
    out = rw(text)
    assert "\tmovq (%rax), %rbx" in out.splitlines()
    assert "movq\t%gs:(%eax), %rbx" in out


# -- errors ---------------------------------------------------------------------------

ERROR_CASES = [
    ("movq %rax, %r14", "writes %r14"),
    ("movl $1, %r14d", "writes %r14d"),
    ("movb $1, %r14b", "writes %r14b"),
    ("popq %r14", "writes %r14"),
    ("xchgq %r14, %rax", "xchgq"),
    ("leaq 8(%rax), %r14", "writes %r14"),
    ("popq %rsp", "pop into %rsp"),
    ("xchgq %rax, %rsp", "xchgq"),
    ("incq %rsp", "unsupported write to the stack pointer"),
    ("cmovneq %rax, %rsp", "unsupported write to the stack pointer"),
    ("movw %ax, %sp", "unsupported write to the stack pointer"),
    ("enter $16, $0", "enter"),
    ("wrgsbase %rax", "segment base"),
    ("wrfsbase %rax", "segment base"),
    ("rdfsbase %rax", "segment base"),
    ("movw %ax, %fs", "segment"),
    ("movl %eax, %gs", "segment"),
    ("ljmp *(%rax)", "far transfer"),
    ("lcall *(%rax)", "far transfer"),
    ("lret", "far transfer"),
    ("iretq", "far transfer"),
    ("sysenter", "far transfer"),
    ("int $0x80", "software interrupt"),
    ("int3", "software interrupt"),
    ("wrpkru", "protection keys"),
    ("xrstor (%rdi)", "extended state"),
    ("vmovdqu (%rdi), %ymm0", "VEX"),
    ("vzeroupper", "VEX"),
    ("vaddsd %xmm0, %xmm1, %xmm2", "VEX"),
    ("kmovw %k1, %eax", "opmask"),
    ("shlx %rax, %rbx, %rcx", "VEX"),
    ("movdqa %xmm16, %xmm0", "register outside"),
    ("movl %es:(%rdi), %eax", "segment override %es"),
    ("movl %ds:4(%rax), %eax", "segment override %ds"),
    ("movl %cs:4(%rax), %eax", "segment override %cs"),
    ("movq %gs:8(%rip), %rax", "plain disp(%rip)"),
    ("movq 8(%eip), %rax", "plain disp(%rip)"),
    ("movl (%ax), %eax", "not a 64- or 32-bit general register"),
    ("movabsq foo, %rax", "64-bit absolute"),
    ("xlatb", "implicit unconfined"),
    ("maskmovdqu %xmm1, %xmm0", "implicit unconfined"),
    ("xbegin .L1", "transactional"),
    ("rep movsb (%esi), (%edi)", "is not (%rsi)/(%rdi)"),
    ("movsb %fs:(%rsi), %es:(%rdi)", "is not (%rsi)/(%rdi)"),
    ("lock movsb", "prefix `lock` on a string instruction"),
    ("movq %fs:8(%rip), %rax", "%fs: with a %rip base"),
    ("vaddps %zmm1, %zmm2, %zmm3{%k1}", "VEX"),
    ("lock cpuid", "unexpected cpuid form"),
    ("addps %xmm1, {sae}", "AVX-512 operand decorations"),
    ("movq *%rax, %rbx", "`*` operand on a non-branch"),
    ("movl x@tpoff, %eax", "absolute TLS offset without %fs"),
    ("call foo, bar", "exactly one operand"),
    ("movq %xmm0, %rsp", "cannot write %xmm0 to the stack pointer"),
    ("call *%eax", "need a 64-bit register"),
    ("lock call foo", "prefix `lock` on a branch"),
    ("lock ret", "prefix `lock` on ret"),
    ("leaq %fs:8(%rax), %rbx", "segment override on lea"),
    ("leave $1", "unexpected operands"),
    ("lock syscall", "unexpected syscall form"),
    ("movq 8(%rax,%rbx,2,1), %rcx", "malformed memory operand"),
    ("movq 8(%rax,rbx), %rcx", "malformed register"),
    ("subl $8, %rsp", "operand size mismatch"),
    ("movq %r11, %fs:8", "needs as scratch"),
    ("movl %fs:(%eax), %eax", "must be a 64-bit register"),
    ("rex64 call __tls_get_addr@PLT", "prefix `rex64`"),
    ("cs movl (%rax), %eax", "segment prefix"),
    ("jmp 8(%rax)", "written with `*`"),
    ("jne *%rax", "conditional branch needs a label"),
    ("movq $1, %cr0", "register outside"),
    ("in $0x60, %al", "privileged"),
    ("hlt; in %dx, %al", "privileged"),
    ("monitor", "privileged"),
    ("{disp32} movl (%rax), %eax", "not an instruction the rewriter understands"),
    ("ret $8", "`ret $N` moves %rsp"),
    ("popfq", "trap and alignment-check flags"),
    ("fxsave (%rdi)", "extended state"),
    ("xsave (%rdi)", "extended state"),
    ("rdpkru", "protection keys"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("line", "why"), ERROR_CASES)
def test_rewrite_errors(line: str, why: str, mode: str) -> None:
    text = f"\t.text\nf:\n\tnop\n\t{line}\n\tnop\n"
    with pytest.raises(RewriteError) as e:
        rewrite_assembly(text, isolation=mode, source="bad.s")
    msg = str(e.value)
    assert msg.startswith("bad.s:4: "), msg
    assert why in msg, msg
    instr = line.split(";")[-1].strip()
    assert f"`{instr}`" in msg, msg


# What x86-64-v3 admits (VEX, %ymm, BMI) and what it still refuses.
V3_ERROR_CASES = [
    ("vpgatherdd %ymm2, (%rax,%ymm1,4), %ymm0", "VSIB"),
    ("vgatherqpd %ymm2, 8(%rdi,%ymm1,8), %ymm0", "VSIB"),
    ("vaddps %zmm1, %zmm2, %zmm3", "register outside"),
    ("vmovdqu %ymm16, %ymm0", "register outside"),
    ("kmovw %k1, %eax", "opmask"),
    ("vaddps %ymm1, %ymm2, %ymm3{%k1}", "mask"),
    ("vmaskmovdqu %xmm1, %xmm0", "implicit unconfined"),
    ("shlx %rax, %rbx, %r14", "window base"),
    ("mulx %rax, %r14, %rcx", "`mulx` writes %r14"),
    ("mulx %rax, %rsp, %rcx", "`mulx` writes %rsp"),
    ("rorx $3, %rax, %rsp", "unsupported write to the stack pointer"),
    ("vmovd %xmm0, %esp", "unsupported write to the stack pointer"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("line", "why"), V3_ERROR_CASES)
def test_rewrite_errors_at_v3(line: str, why: str, mode: str) -> None:
    text = f"\t.text\nf:\n\tnop\n\t{line}\n\tnop\n"
    with pytest.raises(RewriteError) as e:
        rewrite_assembly(text, isolation=mode, source="bad.s", level="x86-64-v3")
    assert str(e.value).startswith("bad.s:4: ") and why in str(e.value), str(e.value)


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v2"])
@pytest.mark.parametrize("line", ["vmovdqu (%rdi), %ymm0", "vaddsd %xmm0, %xmm1, %xmm2",
                                  "shlx %rax, %rbx, %rcx", "andn %eax, %ebx, %ecx"])
def test_vex_needs_v3(line: str, level: str) -> None:
    with pytest.raises(RewriteError, match=f"needs x86-64-v3, and this unit's target is {level}"):
        rewrite_assembly(f"f:\n\t{line}\n", isolation="data", source="v.s", level=level)


V3_CODE = """\
\t.text
\t.globl f
\t.type f, @function
f:
\tvmovdqu (%rdi), %ymm0
\tvpaddd 64(%rsi,%rcx,4), %ymm0, %ymm1
\tvmovdqu %ymm1, (%rdx)
\tvfmadd231pd .LC0(%rip), %ymm1, %ymm2
\tvbroadcastss (%rax), %ymm3
\tvmaskmovps %ymm3, %ymm1, 32(%rdi)
\tshlx %rax, %rbx, %rcx
\tmulx (%rsi), %rax, %rbx
\tandn 8(%rsp), %eax, %ecx
\tmovbe 4(%rdi), %eax
\tlzcnt %rax, %rcx
\tvpextrd $3, %xmm0, %eax
\tvzeroupper
\tret
\t.size f, .-f
\t.section .rodata
.LC0:
\t.quad 0, 0, 0, 0
"""


@pytest.mark.parametrize("mode", MODES)
def test_v3_memory_operands_are_confined(mode: str, tmp_path: Path) -> None:
    lines = [" ".join(x.split()) for x in rewrite_assembly(
        V3_CODE, isolation=mode, source="v3.s", level="x86-64-v3").splitlines()]
    for want in ("vmovdqu %gs:(%edi), %ymm0", "vpaddd %gs:64(%esi,%ecx,4), %ymm0, %ymm1",
                 "vmovdqu %ymm1, %gs:(%edx)", "vfmadd231pd .LC0(%rip), %ymm1, %ymm2",
                 "vmaskmovps %ymm3, %ymm1, %gs:32(%edi)", "mulx %gs:(%esi), %rax, %rbx",
                 "andn %gs:8(%esp), %eax, %ecx", "shlx %rax, %rbx, %rcx"):
        assert want in lines, (want, lines)
    out = rewrite_assembly(V3_CODE, isolation=mode, source="v3.s", level="x86-64-v3")
    insns = check_object(assemble(out, tmp_path), mode)
    assert any(i.mnemonic == "vpaddd" for i in insns[".text"])


@pytest.mark.parametrize("mode", MODES)
def test_cpuid_goes_through_the_glue(mode: str) -> None:
    assert "call __tmebox_cpuid" in body("f:\n\tcpuid\n\tret\n", mode)


def test_r11_live_across_scratch_use_is_detected() -> None:
    text = "movq %rdi, %r11\nmovq %fs:0x28, %rax\nmovq (%r11), %rcx\n"
    with pytest.raises(RewriteError) as e:
        rw(text, source="r11.s")
    assert str(e.value).startswith("r11.s:3: `movq (%r11), %rcx`") and "line 2" in str(e.value)
    # A write of %r11 ends the clobbered range; a label starts a new block.
    assert rw("movq %fs:0x28, %rax\nmovq $1, %r11\nmovq (%r11), %rcx\n")
    assert rw("movq %fs:0x28, %rax\nxorl %r11d, %r11d\naddq %r11, %rax\n")
    assert rw("movq %fs:0x28, %rax\n1:\nmovq (%r11), %rcx\n")
    with pytest.raises(RewriteError, match="line 1"):
        rw("movl x@tpoff(%rax), %eax\naddq %r11, %rax\n")


@pytest.mark.parametrize(("text", "why"), [
    ("rep\n", "prefix without an instruction"),
    ("rep\nfoo:\nmovsb\n", "label between a prefix"),
    ("rep\n.byte 0x90\nmovsb\n", "directive between a prefix"),
    (".code32\n", ".code32"),
    (".intel_syntax noprefix\n", ".intel_syntax"),
    (".bundle_lock\n", "bundling"),
    (".popsection\n", ".popsection without"),
    (".macro m r\n", ".macro in code"),
    (".irp r, rax\n", ".irp in code"),
    (".include \"x.s\"\n", ".include in code"),
    (".insn 0x8b, %eax, (%rdi)\n", ".insn hides"),
    (".att_syntax noprefix\n", "registers without %"),
])
def test_structural_errors(text: str, why: str) -> None:
    with pytest.raises(RewriteError, match=re.escape(why)):
        rw(text)


def test_unknown_mode() -> None:
    with pytest.raises(RewriteError, match="unknown isolation mode 'cfi'"):
        rewrite_assembly("nop\n", isolation="cfi")


# -- gcc output ---------------------------------------------------------------------

C_SOURCE = r"""
#include <stdarg.h>
#include <string.h>
struct big { long a[40]; };
extern void sink(void *);
extern long ext(long);
__thread int tls_counter;
static long table[64];
typedef long (*fn_t)(long);

long sum(const long *p, long n) { long s = 0; for (long i = 0; i < n; i++) s += p[i]; return s; }
void copy_big(struct big *d, const struct big *s) { *d = *s; }
void clear(char *p, unsigned long n) { memset(p, 0, n); }
long dispatch(int k, long x) {
    switch (k) {
    case 0: return x + 1; case 1: return x * 3; case 2: return x - 7; case 3: return x << 2;
    case 4: return x ^ 5; case 5: return ext(x); case 6: return x / 3; default: return -1;
    }
}
long call_ptr(fn_t f, fn_t *tab, long x) { return f(x) + tab[2](x); }
long tail(long x) { return ext(x + 1); }
long frame_big(long x) { char buf[70000]; buf[x] = 1; sink(buf); return buf[3]; }
long vla(long n) { char a[n]; sink(a); return a[0]; }
long uses_alloca(long n) { char *a = __builtin_alloca(n); sink(a); return a[n - 1]; }
int tls_inc(void) { return ++tls_counter; }
long double ld_add(long double a, long double b) { return a + b * 2; }
double to_double(long x, int y) { return (double)x + (double)y; }
float fdiv(float a, float b) { return a / b; }
long global_rw(long i) { table[i & 63] += i; return table[(i + 1) & 63]; }
int cas(int *p, int o, int n) { return __sync_val_compare_and_swap(p, o, n); }
long xchg(long *p, long v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
long fetch_add(long *p) { return __atomic_fetch_add(p, 1, __ATOMIC_SEQ_CST); }
int vsum(int n, ...) { va_list ap; va_start(ap, n); int s = 0;
    for (int i = 0; i < n; i++) s += va_arg(ap, int); va_end(ap); return s; }
void vec(float *restrict a, const float *restrict b, int n) {
    for (int i = 0; i < n; i++) a[i] += b[i] * 2.0f; }
long self_tp(void) { long r; __asm__ ("mov %%fs:0,%0" : "=r"(r)); return r; }
void barrier_store(volatile int *p, int v) {
    __asm__ __volatile__("mov %1, %0 ; lock ; orl $0,(%%rsp)" : "=m"(*p) : "r"(v) : "memory"); }
long raw_syscall(long n, long a) { long r;
    __asm__ __volatile__("syscall" : "=a"(r) : "a"(n), "D"(a) : "rcx", "r11", "memory");
    return r; }
"""


def gcc_S(tmp_path: Path, opt: str, mode: str, extra: tuple[str, ...] = ()) -> str:
    src = tmp_path / "c.c"
    src.write_text(C_SOURCE)
    out = tmp_path / "c.s"
    flags = list(COMMON_CFLAGS) + (list(CODE_DATA_CFLAGS) if mode == "code+data" else [])
    subprocess.run(["gcc", "-S", opt, *flags, *extra, "-o", str(out), str(src)], check=True)
    return out.read_text()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("opt", ["-O0", "-O2", "-O3", "-Os"])
def test_gcc_output(opt: str, mode: str, tmp_path: Path) -> None:
    asm = gcc_S(tmp_path, opt, mode)
    out = rewrite_assembly(asm, isolation=mode, source="c.s")
    sections = check_object(assemble(out, tmp_path, "rw"), mode)
    text = "\n".join(i.mnemonic for insns in sections.values() for i in insns)
    assert "syscall" not in text
    assert "leave" not in text


CLANG = shutil.which("clang") or shutil.which("clang-14")


@pytest.mark.skipif(CLANG is None, reason="clang is not installed")
@pytest.mark.parametrize("mode", MODES)
def test_clang_output(mode: str, tmp_path: Path) -> None:
    # clang has no -ffixed-r11/-ffixed-r14 on x86; at -O0 it does not touch either register.
    src = tmp_path / "c.c"
    src.write_text(C_SOURCE)
    asm = tmp_path / "clang.s"
    flags = [f for f in COMMON_CFLAGS if not f.startswith("-ffixed-")]
    if mode == "code+data":
        flags += CODE_DATA_CFLAGS
    subprocess.run([str(CLANG), "-S", "-O0", *flags, "-o", str(asm), str(src)], check=True)
    text = asm.read_text()
    assert ".addrsig" in text and "callq" in text  # really clang's dialect
    out = rewrite_assembly(text, isolation=mode, source="clang.s")
    obj = assemble(out, tmp_path, "clang_rw")
    check_object(obj, mode)
    link_and_verify(obj, mode, tmp_path)


def test_gcc_forms_present(tmp_path: Path) -> None:
    # The C source really exercises the interesting forms (so the test above means something).
    asm = gcc_S(tmp_path, "-O2", "data")
    for pattern in (r"movslq\t\(%r\w+,%r\w+,4\), %r\w+", r"rep movsq", r"%fs:0,",
                    r"call\t\*%r", r"call\t\*\d+\(%r", r"jmp\t\*%r", r"fldt", r"lock cmpxchg",
                    r"xchgq", r"subq\t%r\w+, %rsp"):
        assert re.search(pattern, asm), pattern
    out = rw(asm)
    # gcc's jump-table load: the table address is a full pointer, its low half indexes the
    # window (windows are 4 GiB aligned).
    assert re.search(r"movslq\t%gs:\(%e\w+,%e\w+,4\), %r\w+", out)
    asm = gcc_S(tmp_path, "-O2", "data", ("-fstack-clash-protection",))
    assert re.search(r"orq\t\$0, \(%rsp\)", asm)
    out = rw(asm)
    assert "orq\t$0, %gs:(%esp)" in out
    check_object(assemble(out, tmp_path), "data")


# -- the verifier accepts what the rewriter emits ------------------------------------------

# Links one rewritten object right after the runtime page; undefined symbols become the
# runtime entry (a legal direct-branch target), so each object verifies on its own.
_VERIFY_LD = """
SECTIONS {
  . = 0;
  .tmebox_rt : { . = 0x1000; }
  .text 0x1000 : { *(.text .text.* .init .fini) }
  . = ALIGN(0x1000);
  .data : { *(.rodata .rodata.* .data .data.* .bss .bss.* .tdata .tbss COMMON) }
  /DISCARD/ : { *(.note.*) *(.comment) }
}
__tmebox_rt_syscall = 0x0;
__tmebox_rt_exit = 0x20;
"""


def link_and_verify(obj: Path, mode: str, tmp_path: Path) -> None:
    from tmebox.trusted.verifier import verify_code

    script = tmp_path / "verify.ld"
    script.write_text(_VERIFY_LD)
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    defs = [f"--defsym={u}=0x0" for u in undefined if u != "U" and u != RT_SYSCALL_SYMBOL]
    if TP_SYMBOL not in undefined:
        defs.append(f"--defsym={TP_SYMBOL}=0x3000")
    elf_path = tmp_path / "linked.elf"
    subprocess.run(["ld", "-T", str(script), *defs, "-o", str(elf_path), str(obj)], check=True)
    with elf_path.open("rb") as f:
        elf = ELFFile(f)
        code = elf.get_section_by_name(".text").data()
        end = max(sec["sh_addr"] + sec["sh_size"] for sec in elf.iter_sections())
    verdict = verify_code(code, code_offset=0x1000, image_size=max(end, 0x10000),
                          isolation=mode, name=obj.name)
    assert verdict.ok, verdict.summary()


VERIFIED_GOLDENS = ["control", "mem_operands", "stack", "strings", "parsing"]


@pytest.mark.parametrize("mode", MODES)
def test_verifier_accepts_rewritten_gcc_output(mode: str, tmp_path: Path) -> None:
    for opt in ("-O2", "-Os"):
        out = rw(gcc_S(tmp_path, opt, mode), mode)
        link_and_verify(assemble(out, tmp_path, f"v{opt}"), mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", VERIFIED_GOLDENS)
def test_verifier_accepts_goldens(name: str, mode: str, tmp_path: Path) -> None:
    out = rw((GOLDEN / f"{name}.s").read_text(), mode)
    link_and_verify(assemble(out, tmp_path, name), mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_verifier_accepts_rewritten_bit_strings(mode: str, tmp_path: Path) -> None:
    src = "\t.text\n\tbtq %rdi, bits(%rip)\n\tbtcw %ax, bits(%rip)\n\tret\n" \
          "\t.bss\nbits:\t.zero 64\n"
    link_and_verify(assemble(rw(src, mode), tmp_path), mode, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_verifier_rejects_unrewritten(mode: str, tmp_path: Path) -> None:
    """The check above can fail: the same code without the rewriter is rejected."""
    from tmebox.trusted.verifier import verify_code

    obj = assemble("\t.text\n\tmovq 8(%rdi), %rax\n\tret\n", tmp_path)
    code = code_sections(obj)[".text"]
    assert not verify_code(code, code_offset=0x1000, image_size=0x10000, isolation=mode).ok


# -- musl's hand-written assembly (when the libc sources are in the cache) -------------

MUSL_TARBALL = Path.home() / ".cache/tmebox/src/musl_1.2.3.orig.tar.gz"


def musl_asm_files() -> list[tuple[str, str]]:
    if not MUSL_TARBALL.exists():
        return []
    out = []
    with tarfile.open(MUSL_TARBALL) as tar:
        for m in tar.getmembers():
            if re.search(r"/(src/\w+|crt)/x86_64/[^/]+\.s$", m.name):
                f = tar.extractfile(m)
                assert f is not None
                out.append((m.name.split("/", 1)[1], f.read().decode()))
    return sorted(out)


@pytest.mark.skipif(not MUSL_TARBALL.exists(), reason="musl sources not fetched yet")
@pytest.mark.parametrize("mode", MODES)
def test_musl_asm(mode: str, tmp_path: Path) -> None:
    files = musl_asm_files()
    assert len(files) > 30
    for name, text in files:
        if name.endswith("setjmp/x86_64/longjmp.s"):
            # Restores %r14 from the jmp_buf: must be refused (the base register is
            # constant for the sandbox's life; the libc build drops that line).
            with pytest.raises(RewriteError, match=r"longjmp.s:\d+: `mov 32\(%rdi\),%r14`"):
                rewrite_assembly(text, isolation=mode, source=name)
            text = text.replace("mov 32(%rdi),%r14", "")
        out = rewrite_assembly(text, isolation=mode, source=name)
        check_object(assemble(out, tmp_path, Path(name).stem), mode)


# -- property test: operands ----------------------------------------------------------

_GPR = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r15"]
_IDX = [r for r in _GPR if r != "rsp"]
_disp = st.one_of(st.just(""), st.integers(-(1 << 31), (1 << 31) - 1).map(str),
                  st.integers(0, 1 << 16).map(hex), st.sampled_from(["foo", "foo+8", "foo-4"]))
_TEMPLATES = ["movq {}, %rax", "movl %ecx, {}", "addq $1, {}", "movdqu {}, %xmm0",
              "fldt {}", "lock cmpxchgq %rdx, {}", "cmpb $0, {}", "pushq {}", "movzwl {}, %edx",
              "prefetcht0 {}", "call *{}", "jmp *{}", "xchgl %eax, {}"]


@st.composite
def memory_operand(draw: st.DrawFn) -> tuple[str, str | None, str | None]:
    disp = draw(_disp)
    base = draw(st.one_of(st.none(), st.sampled_from(_GPR)))
    index = draw(st.one_of(st.none(), st.sampled_from(_IDX)))
    if base is None and index is None:
        return (disp or "0x10"), None, None
    scale = draw(st.sampled_from(["", ",1", ",2", ",4", ",8"])) if index else ""
    inner = (f"%{base}" if base else "") + (f",%{index}{scale}" if index else "")
    return f"{disp}({inner})", base, index


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=memory_operand(), template=st.sampled_from(_TEMPLATES), mode=st.sampled_from(MODES))
def test_property_operands(op: tuple[str, str | None, str | None], template: str, mode: str,
                           tmp_path: Path) -> None:
    operand, base, index = op
    out = rewrite_assembly(f"\t.text\n\t{template.format(operand)}\n", isolation=mode)
    insns = check_object(assemble(out, tmp_path), mode)[".text"]
    mems = [(i, o) for i in insns for o in i.cs.operands
            if o.type == x86.X86_OP_MEM and not i.mnemonic.startswith("nop")]
    assert len(mems) == 1
    ins, mem = mems[0]
    assert mem.mem.segment == x86.X86_REG_GS and ins.cs.addr_size == 4
    names = {"base": base, "index": index}
    for field, want in names.items():
        got = getattr(mem.mem, field)
        if want is None:
            assert got == 0 or ins.cs.reg_name(got) == "eiz"
        else:
            r32 = {"rsp": "esp", "rbp": "ebp"}.get(want) or (
                want + "d" if want[1].isdigit() else "e" + want[1:])
            assert ins.cs.reg_name(got) == r32


# -- property test: whole instructions, adversarially ----------------------------------

def _words(text: str) -> list[str]:
    return text.split()


_ANY_REG = _words("rax rbx rcx rdx rsi rdi rbp rsp r8 r11 r14 r15 eax ebx ecx esi edi ebp esp "
                  "r8d r11d r14d ax sp r14w r11w al spl r14b r11b xmm0 xmm3 st(1)")
_ANY_MNEMONIC = _words(
    "mov movq movl movw movb add addq addl sub subq subl and andq andl or orq xor xorq lea leaq "
    "leal cmp cmpq test push pushq pop popq inc incq dec neg not imul imulq xchg xchgq xadd "
    "cmpxchg cmpxchgq bsf bts btr shl shlq sar cmovne sete movzbl movsbq movslq movdqu movaps movd "
    "pxor cvtsi2sdq fldt fstpt call jmp callq jmpq ret leave movsb movsq stosb stosq lodsb scasb "
    "cmpsb prefetcht0 nopw adc sbb rol bswap popcnt movabsq leave enter int3 syscall hlt"
)


@st.composite
def any_operand(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["reg", "reg", "mem", "mem", "imm", "ind"]))
    if kind == "reg":
        return "%" + draw(st.sampled_from(_ANY_REG))
    if kind == "imm":
        return "$" + draw(st.sampled_from(["1", "-16", "4096", "0xfffffffffffffff0", "foo"]))
    seg = draw(st.sampled_from(["", "", "", "%fs:", "%gs:", "%es:", "%ds:"]))
    disp = draw(st.sampled_from(["", "8", "-16", "0x28", "foo", "foo+8", "x@tpoff"]))
    base = draw(st.sampled_from([None, "rip", "eax", "esp", *_GPR]))
    index = draw(st.sampled_from([None, "ecx", *_IDX]))
    scale = draw(st.sampled_from(["1", "2", "4", "8"]))
    if base is None and index is None:
        mem = seg + (disp or "0x10")
    elif base == "rip":
        mem = f"{seg}{disp or '0'}(%rip)"
    else:
        inner = (f"%{base}" if base else "") + (f",%{index},{scale}" if index else "")
        mem = f"{seg}{disp}({inner})"
    return ("*" + mem) if kind == "ind" else mem


def _gas_accepts(text: str, tmp_path: Path, name: str) -> Path | None:
    src, obj = tmp_path / f"{name}.s", tmp_path / f"{name}.o"
    src.write_text(text)
    r = subprocess.run(["as", "--64", "-o", str(obj), str(src)], capture_output=True, text=True)
    return obj if r.returncode == 0 else None


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mn=st.sampled_from(_ANY_MNEMONIC), ops=st.lists(any_operand(), max_size=3),
       mode=st.sampled_from(MODES))
def test_property_any_instruction_is_refused_or_confined(mn: str, ops: list[str], mode: str,
                                                          tmp_path: Path) -> None:
    """Whatever the input, the rewriter refuses it or emits code the checker accepts."""
    src = f"\t.text\n\t{mn} {', '.join(ops)}\n"
    try:
        out = rewrite_assembly(src, isolation=mode)
    except RewriteError:
        return
    if _gas_accepts(src, tmp_path, "orig") is None:
        return  # not an instruction at all; the assembler refuses it either way
    obj = _gas_accepts(out, tmp_path, "rw")
    assert obj is not None, f"{src!r} assembles but its rewrite does not:\n{out}"
    check_object(obj, mode)


# -- semantics under unicorn ---------------------------------------------------------

SEM_C = r"""
struct s { long a, b, c[6]; };
typedef long (*fn_t)(long);
__attribute__((noinline)) static long helper(long x) { return x * 7 + 1; }
__attribute__((noinline)) static long with_vla(long n, const char *src) {
    char v[n];
    for (long i = 0; i < n; i++) v[i] = src[i % 64];
    long t = 0;
    for (long i = 0; i < n; i += 3) t += v[i];
    return t;
}
__attribute__((noinline)) static long interp(const unsigned char *code, long acc) {
    void *ops[] = { &&op_add, &&op_mul, &&op_neg, &&op_end };  /* labels as values */
    goto *ops[*code];
op_add: acc += 3; code++; goto *ops[*code];
op_mul: acc *= 5; code++; goto *ops[*code];
op_neg: acc = -acc; code++; goto *ops[*code];
op_end: return acc;
}
long work(long *p, long n, char *dst, const char *src) {
    unsigned char prog[8] = { 0, 1, 2, 0, 1, 3 };
    volatile fn_t fp = helper;
    long s = helper(n) + fp(n + 1) + with_vla(n * 13, src);
    for (long i = 0; i < n; i++) s += p[i] * (i + 1);
    char *d = dst;
    const char *from = src;
    unsigned long count = 64;
    __asm__ __volatile__("rep movsb" : "+D"(d), "+S"(from), "+c"(count) : : "memory");
    struct s *q = (struct s *)dst;
    q->b = s;
    char tmp[300];
    for (int i = 0; i < 300; i++) tmp[i] = (char)(src[i % 64] + i);
    for (int i = 0; i < 300; i += 7) s += tmp[i];
    return s + q->a + interp(prog, n);
}
"""


def build_flat(tmp_path: Path, mode: str, rewrite: bool) -> tuple[bytes, int]:
    """The code of SEM_C (no relocations) and the offset of `work` in it."""
    src = tmp_path / "sem.c"
    src.write_text(SEM_C)
    asm = tmp_path / "sem.s"
    flags = list(COMMON_CFLAGS) + (list(CODE_DATA_CFLAGS) if mode == "code+data" else [])
    subprocess.run(["gcc", "-S", "-O2", "-fno-builtin", "-minline-all-stringops",
                    "-mstringop-strategy=rep_byte", *flags, "-o", str(asm), str(src)], check=True)
    text = asm.read_text()
    if rewrite:
        text = rewrite_assembly(text, isolation=mode)
    obj = assemble(text, tmp_path, f"sem_{rewrite}")
    with obj.open("rb") as f:
        elf = ELFFile(f)
        rela = elf.get_section_by_name(".rela.text")
        assert rela is None or rela.num_relocations() == 0
        code = elf.get_section_by_name(".text").data()
    return code, function_symbols(obj)["work"][1]


@pytest.mark.parametrize("mode", MODES)
def test_semantics_under_unicorn(mode: str, tmp_path: Path) -> None:
    import unicorn
    from unicorn import x86_const as u

    win = 3 << 32
    code_at, stack_top, data_at, exit_at = win + 0x10000, win + 0x100000, win + 0x200000, \
        win + 0x30000

    def run(built: tuple[bytes, int], sandboxed: bool) -> tuple[int, bytes]:
        code, entry = built
        mu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        mu.mem_map(code_at, 0x20000 + 0x10000)
        mu.mem_map(stack_top - 0x10000, 0x10000)
        mu.mem_map(data_at, 0x10000)
        mu.mem_write(code_at, code)
        mu.mem_write(exit_at, b"\xf4")
        arr = b"".join((i * 3 - 5).to_bytes(8, "little", signed=True) for i in range(10))
        mu.mem_write(data_at, arr)
        mu.mem_write(data_at + 0x1000, bytes(range(64)))
        sp = stack_top - 0x100
        mu.mem_write(sp, exit_at.to_bytes(8, "little"))
        regs = {u.UC_X86_REG_RSP: sp, u.UC_X86_REG_RDI: data_at, u.UC_X86_REG_RSI: 10,
                u.UC_X86_REG_RDX: data_at + 0x2000, u.UC_X86_REG_RCX: data_at + 0x1000}
        if sandboxed:
            regs[u.UC_X86_REG_R14] = win
            mu.reg_write(u.UC_X86_REG_GS_BASE, win)
        for r, v in regs.items():
            mu.reg_write(r, v)
        mu.emu_start(code_at + entry, exit_at, count=400_000)
        assert mu.reg_read(u.UC_X86_REG_RIP) == exit_at
        return mu.reg_read(u.UC_X86_REG_RAX), bytes(mu.mem_read(data_at + 0x2000, 64))

    plain = run(build_flat(tmp_path, mode, False), False)
    confined = run(build_flat(tmp_path, mode, True), True)
    assert plain == confined
    assert plain[1][:8] == bytes(range(8))


def test_escape_attempt_stays_in_window(tmp_path: Path) -> None:
    """A pointer into another window reads the sandbox's own window instead."""
    import unicorn
    from unicorn import x86_const as u

    asm = ("\t.text\n\tmovq (%rdi), %rax\n\tmovq %rsi, %rsp\n\tpushq $7\n"
           "\tmovq %rdi, %rsi\n\tmovq $8, %rcx\n\tleaq 0x100(%rsp), %rdi\n\trep movsb\n"
           "\tmovq (%rsp), %rbx\n\thlt\n")
    code = code_sections(assemble(rewrite_assembly(asm, isolation="data"), tmp_path))[".text"]
    mine, other = 5 << 32, 6 << 32
    mu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    for w, fill in ((mine, b"M"), (other, b"S")):
        mu.mem_map(w, 0x20000)
        mu.mem_write(w, fill * 0x20000)
    mu.mem_write(mine + 0x10000, code)
    mu.reg_write(u.UC_X86_REG_R14, mine)
    mu.reg_write(u.UC_X86_REG_GS_BASE, mine)
    mu.reg_write(u.UC_X86_REG_RSP, mine + 0x8000)
    mu.reg_write(u.UC_X86_REG_RDI, other + 0x40)  # the neighbour's secret
    mu.reg_write(u.UC_X86_REG_RSI, other + 0x9000)  # a stack pointer in the neighbour
    with pytest.raises(unicorn.UcError):  # hlt ends the run
        mu.emu_start(mine + 0x10000, mine + 0x10000 + len(code), count=1000)
    assert mu.reg_read(u.UC_X86_REG_RAX) == int.from_bytes(b"M" * 8, "little")
    assert mine <= mu.reg_read(u.UC_X86_REG_RSP) < mine + 0x20000
    assert bytes(mu.mem_read(other, 0x20000)) == b"S" * 0x20000  # nothing written there
    assert mu.reg_read(u.UC_X86_REG_RBX) == 7


# -- command line and import weight ------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "in.s"
    src.write_text("\t.text\n\tmovq 8(%rdi), %rax\n\tret\n")
    out = tmp_path / "out.s"
    r = subprocess.run([sys.executable, "-m", "tmebox.toolchain.rewriter", "--isolation",
                        "code+data", str(src), "-o", str(out)], env=_env(), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == rewrite_assembly(src.read_text(), isolation="code+data",
                                               source=str(src))


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.s"
    src.write_text("\t.text\n\tmovq %rax, %r14\n")
    r = subprocess.run([sys.executable, "-m", "tmebox.toolchain.rewriter", "--isolation",
                        "data", str(src), "-o", str(tmp_path / "o.s")], env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{src}:2: `movq %rax, %r14`" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tmebox.toolchain.rewriter", str(src)],
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tmebox.toolchain.rewriter", "--isolation", "data",
                        str(tmp_path / "missing.s"), "-o", "-"], env=_env(), capture_output=True,
                       text=True)
    assert r.returncode == 1 and "missing.s" in r.stderr and "Traceback" not in r.stderr


def test_import_is_light() -> None:
    code = ("import sys, tmebox.toolchain.rewriter; "
            "print(sorted(m for m in ('capstone','unicorn','numpy','elftools','cffi','re','enum',"
            "'dataclasses','argparse','cryptography') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"


def test_doc_examples() -> None:
    """The examples in docs/rewriter.md are real rewriter output."""
    doc = (REPO / "docs" / "rewriter.md").read_text()
    pairs = re.findall(r"```asm\n# in \((data|code\+data)\)\n(.*?)```\n+```asm\n# out\n(.*?)```",
                       doc, re.S)
    assert len(pairs) >= 3
    for mode, src, expected in pairs:
        got = rewrite_assembly(src, isolation=mode)
        assert got.strip() == expected.strip(), src



# -- regression: flags live across a confined string instruction -----------------------

# The sqlite3Prepare pattern (docs/evaluation.md): gcc -O2 compares, inlines the memset or
# memcpy as `rep stosq`/`rep movsq`, and reads the compare's carry flag after it (sbb).
FLAGS_ACROSS_STRING_OPS = r"""
#include <string.h>
struct parse { char pad[100]; unsigned char flag; char rest[300]; };
struct hdr { long a[40]; };
__attribute__((noinline)) int clear(struct parse *p, struct hdr *h) {
    unsigned char f = p->flag;
    memset(h, 0, sizeof *h);
    return f ? 7 : 9;
}
__attribute__((noinline)) int copy(struct parse *p, struct hdr *d, const struct hdr *s) {
    unsigned char f = p->flag;
    memcpy(d, s, sizeof *d);
    return f ? 7 : 9;
}
static struct parse P;
static struct hdr A, B;
int flags_across_string_ops(int flag) {
    P.flag = (unsigned char)flag;
    A.a[5] = 1;
    B.a[39] = 3;
    int r = clear(&P, &A);
    r = r * 10 + copy(&P, &A, &B);
    return r * 100 + (int)(A.a[5] * 10 + A.a[39]);
}
"""


def test_flags_live_across_string_ops_pattern_still_compiles(tmp_path: Path) -> None:
    """Keeps the regression below meaningful: gcc still reads flags across the string ops."""
    src = tmp_path / "f.c"
    src.write_text(FLAGS_ACROSS_STRING_OPS)
    asm = subprocess.run(["gcc", "-O2", "-S", "-o", "-", *COMMON_CFLAGS, *CODE_DATA_CFLAGS,
                          str(src)], capture_output=True, text=True, check=True).stdout
    for op in ("stosq", "movsq"):
        assert re.search(rf"\tcmpb\t[^\n]*\n(?:\t(?!sbb|j|set|cmov)[^\n]*\n)*\trep {op}\n"
                         r"\tsbbl\t", asm), f"gcc no longer keeps flags across rep {op}:\n{asm}"


@pytest.mark.parametrize("mode", MODES)
def test_flags_live_across_string_ops_run_like_native(build_image, mode: str,
                                                      tmp_path: Path) -> None:
    """Before the lea confinement, `orq %r14,%rdi` cleared CF and flag=0 returned 7 not 9."""
    import ctypes

    import tmebox

    so = tmp_path / "native.so"
    src = tmp_path / "native.c"
    src.write_text(FLAGS_ACROSS_STRING_OPS)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    native = ctypes.CDLL(str(so)).flags_across_string_ops
    image = build_image(FLAGS_ACROSS_STRING_OPS, mode=mode)
    with tmebox.Runtime(backend="native", max_sandboxes=4, min_isolation=mode) as rt:
        sb = rt.spawn(rt.load(image), timeout=10)
        for flag in (0, 1, 255):
            expected = (7 if flag else 9) * 1100 + 3
            assert native(flag) == expected
            assert sb.call("flags_across_string_ops", flag) == expected, f"flag={flag}"
