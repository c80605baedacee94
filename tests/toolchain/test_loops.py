"""Short innermost loops lie inside one 64-byte line in both modes (unit.LOOP_CFLAGS;
docs/evaluation.md, "Loops across a 64-byte line"), and the check of it finds loops that
do not."""

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

# The same short loop after 0..7 stores, so that without the alignment the loops start at
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


@pytest.mark.parametrize("mode", abi.ISOLATION_MODES)
def test_short_loops_lie_inside_one_line(tmp_path: Path, mode: str) -> None:
    obj = compiled(tmp_path, mode)
    assert len(loops.short_loops(obj)) == 8
    assert loops.straddling(obj) == []


def test_code_data_loop_alignment_pads_whole_bundles(tmp_path: Path) -> None:
    # gas pads `.p2align 6` with 11-byte nops from where it starts, across bundle ends
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
def test_without_the_alignment_some_loops_cross_a_line(tmp_path: Path, mode: str) -> None:
    with mock.patch.object(unit, "LOOP_CFLAGS", ()):
        obj = compiled(tmp_path, mode)
    assert len(loops.short_loops(obj)) == 8
    assert loops.straddling(obj) != []


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
