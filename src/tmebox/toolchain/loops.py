"""Short innermost loops of an object or image, and which of them cross a 64-byte line.

A loop is a backward direct jump and its target: the bytes from the target to the end of
the jump. Short: at most one line long, so that it could lie inside one line. Innermost: no
other such loop lies inside it. On Zen 3 a short loop over two lines runs up to 1.7x
slower than inside one (docs/evaluation.md, "Loops across a 64-byte line"); the toolchain
aligns loops to a line (unit.LOOP_CFLAGS), and this is how the tests and
bench/toolchain_ab.py check that it worked.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["LINE", "short_loops", "straddling"]

LINE = 64
_TARGET = re.compile(r"0x[0-9a-f]+|[0-9]")


def short_loops(path: Path) -> list[tuple[int, int]]:
    """(start, end) addresses of the short innermost loops of path's code sections
    (an object's sections each from 0)."""
    import capstone
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    found = []
    with path.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                continue
            back = []
            for addr, size, mnemonic, ops in md.disasm_lite(sec.data(), sec["sh_addr"]):
                # a direct jump's operand is its target: 0x1f0, or 0..9 in decimal
                if mnemonic.startswith("j") and _TARGET.fullmatch(ops) and int(ops, 0) <= addr:
                    back.append((int(ops, 0), addr + size))
            short = [(s, e) for s, e in back if e - s <= LINE]
            found += [(s, e) for s, e in short
                      if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in short)]
    return found


def straddling(path: Path) -> list[tuple[int, int]]:
    """The short innermost loops of path that cross a 64-byte line."""
    return [(s, e) for s, e in short_loops(path) if s // LINE != (e - 1) // LINE]
