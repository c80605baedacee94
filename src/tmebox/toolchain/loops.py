"""Short innermost loops of an object or image, which of them cross a 64-byte line, and the
padding that keeps them inside one.

A loop is a backward direct jump and its target: the bytes from the target to the end of
the jump. Short: at most one line long, so that it could lie inside one line. Innermost: no
other such loop lies inside it. On Zen 3 a short loop over two lines runs up to 1.7x
slower than inside one (docs/evaluation.md, "Loops across a 64-byte line").

unit.assemble assembles a unit once with its local labels kept (`as -L`), finds the label
at the head of each short innermost loop (`heads`), puts `.p2align 6,,SIZE-1` before it
(`pad`; two alignments for a loop longer than half a line, so that no nop crosses a
bundle end in code+data mode) and assembles again: the assembler pads to the next line
exactly where the loop would otherwise cross one, and by no more than that, in whatever
layout the other pads make; the directive also aligns the section to a line, so that the
offsets hold in the image. Nothing is computed by an assembler expression.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["LINE", "alignment", "heads", "pad", "short_loops", "straddling"]

LINE = 64
_TARGET = re.compile(r"0x[0-9a-f]+|[0-9]")


def _code_sections(elf: Any) -> Iterator[tuple[int, Any]]:
    """(index, section) of each code section."""
    from elftools.elf.constants import SH_FLAGS

    for index, sec in enumerate(elf.iter_sections()):
        if sec["sh_type"] == "SHT_PROGBITS" and sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            yield index, sec


def _section_loops(sec: Any) -> list[tuple[int, int]]:
    """(start, end) addresses of a code section's short innermost loops."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    back = []
    for addr, size, mnemonic, ops in md.disasm_lite(sec.data(), sec["sh_addr"]):
        # a direct jump's operand is its target: 0x1f0, or 0..9 in decimal
        if mnemonic.startswith("j") and _TARGET.fullmatch(ops) and int(ops, 0) <= addr:
            back.append((int(ops, 0), addr + size))
    short = [(s, e) for s, e in back if e - s <= LINE]
    inside = sorted(short)  # a loop inside (s, e) starts in [s, e)
    starts = [s for s, _ in inside]
    return [(s, e) for s, e in short
            if not any(e2 <= e and (s2, e2) != (s, e) for s2, e2
                       in inside[bisect.bisect_left(starts, s):bisect.bisect_left(starts, e)])]


def short_loops(path: Path) -> list[tuple[int, int]]:
    """(start, end) addresses of the short innermost loops of path's code sections
    (an object's sections each from 0)."""
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as f:
        return [loop for _, sec in _code_sections(ELFFile(f)) for loop in _section_loops(sec)]


def straddling(path: Path) -> list[tuple[int, int]]:
    """The short innermost loops of path that cross a 64-byte line."""
    return [(s, e) for s, e in short_loops(path) if s // LINE != (e - 1) // LINE]


def heads(obj: Path) -> dict[str, int]:
    """Local label -> size of the short innermost loop it heads, for an object assembled
    with its local labels (`as -L`); loops without a local label at their start are left
    out (the symbol table names them by section and offset only)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with obj.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            return {}
        labels: dict[tuple[int, int], str] = {}
        for sym in symtab.iter_symbols():
            if sym.name.startswith(".L") and isinstance(sym["st_shndx"], int):
                labels.setdefault((sym["st_shndx"], sym["st_value"]), sym.name)
        found = {}
        for index, sec in _code_sections(elf):
            for s, e in _section_loops(sec):
                if (index, s) in labels:
                    found[labels[(index, s)]] = e - s
        return found


def alignment(size: int) -> list[str]:
    """Directives that move a loop of size bytes (from 2, a jump to itself, up to a line)
    to the next line if and only if it would cross one from where it starts, with nops
    that cross no bundle end (code+data mode): a move of up to half a line starts in the
    line's second bundle; a loop that needs more (one longer than half a line and a byte)
    first moves to the second bundle, then on to the next line. (A max-skip of 0 would
    mean no limit.)"""
    half = LINE // 2
    if size <= half + 1:
        return [f"\t.p2align 6,,{size - 1}"]
    return [f"\t.p2align 5,,{size - half - 1}", f"\t.p2align 6,,{half}"]


def pad(text: str, sizes: Mapping[str, int]) -> str:
    """text (as the rewriter makes it: a label alone on its line) with each label of sizes
    preceded by the alignment of a loop of that size."""
    out = []
    for line in text.split("\n"):
        size = sizes.get(line[:-1]) if line.endswith(":") else None
        if size:
            out += alignment(size)
        out.append(line)
    return "\n".join(out)
