"""Short innermost loops lie inside one 64-byte line in both modes (unit.FIT_LOOPS,
toolchain.loops; docs/evaluation.md, "Loops across a 64-byte line"), padded only where they
would cross one, and the check of it finds loops that do not."""

from __future__ import annotations

import subprocess
from pathlib import Path
from unittest import mock

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from tmebox.toolchain import loops, unit
from tmebox.toolchain.rewriter import rewrite_assembly
from tmebox.trusted import abi

# The same short loop after 0..7 stores, so that without the pads the loops start at
# different offsets in their lines and some of them cross one (in both modes).
MANY_LOOPS = "extern int g[];\n" + "".join(
    f"void f{i}(int n, double *c, const double *a, const double *b) {{\n"
    + "".join(f"    g[{j}] = n + {j};\n" for j in range(i))
    + "    for (int j = 0; j < n; j++) c[j] += a[j] * b[j];\n}\n"
    for i in range(8))


def compiled(tmp_path: Path, mode: str) -> Path:
    src = tmp_path / "loops.c"
    src.write_text(MANY_LOOPS)
    obj = tmp_path / f"loops-{mode.replace('+', '_')}.o"
    unit.compile_unit(src, obj, isolation=mode, flags=["-O2", "-nostdinc"])
    return obj


def symbols(obj: Path) -> list[str]:
    with obj.open("rb") as f:
        return [sym.name for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols()]


@pytest.mark.parametrize("mode", abi.ISOLATION_MODES)
def test_short_loops_lie_inside_one_line(tmp_path: Path, mode: str) -> None:
    obj = compiled(tmp_path, mode)
    assert len(loops.short_loops(obj)) == 8
    assert loops.straddling(obj) == []
    with obj.open("rb") as f:
        assert ELFFile(f).get_section_by_name(".text")["sh_addralign"] == loops.LINE
    (tmp_path / "unfit").mkdir()
    with mock.patch.object(unit, "FIT_LOOPS", False):
        unfit = compiled(tmp_path / "unfit", mode)
    assert symbols(obj) == symbols(unfit)  # the local labels of the first assembly are gone


def test_code_data_loop_pads_cross_no_bundle_end(tmp_path: Path) -> None:
    # gas pads an alignment with up to 11-byte nops from where it starts
    obj = compiled(tmp_path, "code+data")
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    with obj.open("rb") as f:
        code = ELFFile(f).get_section_by_name(".text").data()
    insns = list(md.disasm_lite(code, 0))
    assert sum(size for _, size, _, _ in insns) == len(code)
    assert [a for a, size, _, _ in insns if a // abi.BUNDLE_SIZE != (a + size - 1)
            // abi.BUNDLE_SIZE] == []


@pytest.mark.parametrize(("directive", "first"), [
    (".p2align 6", ".p2align 5"), (".p2align 6,,15", ".p2align 5,,15"),
    (".balign 64", ".p2align 5"), (".align 128,0x90", ".p2align 5,0x90"),
    (".p2align 5", None), (".balign 16", None)])
def test_alignments_beyond_a_bundle_align_to_a_bundle_first(directive: str,
                                                            first: str | None) -> None:
    asm = f".text\nf:\n\tret\n\t{directive}\n\tret\n"
    out = rewrite_assembly(asm, isolation="code+data").split("\n")
    i = out.index("\t" + directive)
    assert (out[i - 1] == "\t" + first) if first else ".p2align" not in out[i - 1]
    assert rewrite_assembly(asm, isolation="data").count("align") == 1


@pytest.mark.parametrize("mode", abi.ISOLATION_MODES)
def test_without_the_pads_some_loops_cross_a_line(tmp_path: Path, mode: str) -> None:
    with mock.patch.object(unit, "FIT_LOOPS", False):
        obj = compiled(tmp_path, mode)
    assert len(loops.short_loops(obj)) == 8
    assert loops.straddling(obj) != []


def test_alignment_moves_a_loop_only_if_it_would_cross_a_line(tmp_path: Path) -> None:
    # every size and offset in a line, each in a section of its own
    cases = [(size, offset) for size in range(2, loops.LINE + 1) for offset in range(64)]
    asm = "".join(f'.section .text.c{n},"ax",@progbits\n.p2align 6\n.skip {offset}, 0xcc\n'
                  + "\n".join(loops.alignment(size)) + f"\n.skip {size}, 0xcc\n"
                  for n, (size, offset) in enumerate(cases))
    obj = tmp_path / "alignment.o"
    subprocess.run(["as", "--64", "-o", str(obj), "-"], input=asm, text=True, check=True,
                   capture_output=True)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    with obj.open("rb") as f:
        elf = ELFFile(f)
        for n, (size, offset) in enumerate(cases):
            sec = elf.get_section_by_name(f".text.c{n}")
            code = sec.data()
            start = len(code) - size
            assert start == (offset if offset + size <= loops.LINE else loops.LINE), (size, offset)
            assert sec["sh_addralign"] == loops.LINE
            nops = list(md.disasm_lite(code[offset:start], offset))
            assert sum(length for _, length, _, _ in nops) == start - offset
            assert all(a // abi.BUNDLE_SIZE == (a + length - 1) // abi.BUNDLE_SIZE
                       for a, length, _, _ in nops), (size, offset)


@pytest.mark.parametrize(("offset", "start"), [(0, 0), (57, 57), (58, 64), (63, 64)])
def test_a_loop_is_padded_only_if_it_would_cross_a_line(tmp_path: Path, offset: int,
                                                         start: int) -> None:
    obj = tmp_path / "t.o"
    # a 7-byte loop (add, dec, jne)
    asm = (f".text\n.p2align 6\nf:\n\t.nops {offset}\n.L1:\n\taddq %rax, %rbx\n"
           "\tdecl %ecx\n\tjne .L1\n\tret\n")
    unit.assemble(asm, obj, isolation="data", source="t.s")
    assert loops.short_loops(obj) == [(start, start + 7)]


def test_straddling_sees_where_a_loop_lies(tmp_path: Path) -> None:
    def obj_with_loop_at(offset: int) -> Path:
        obj = tmp_path / f"at{offset}.o"
        # a 7-byte loop (add, dec, jne) inside a 64-byte loop that is not innermost
        asm = (f".text\n.p2align 6\n2:\n.nops {offset}\n1:\naddq %rax, %rbx\ndecl %ecx\n"
               "jne 1b\njmp 2b\n")
        subprocess.run(["as", "--64", "-o", str(obj), "-"], input=asm, text=True, check=True)
        return obj

    assert loops.short_loops(obj_with_loop_at(0)) == [(0, 7)]
    assert loops.straddling(obj_with_loop_at(0)) == []
    assert loops.straddling(obj_with_loop_at(57)) == []  # bytes 57..63: one line
    assert loops.straddling(obj_with_loop_at(58)) == [(58, 65)]
