"""Merge the assembler's one-byte nop padding into multi-byte nops, in place.

GNU as pads bundles (`.bundle_align_mode`, `.bundle_lock align_to_end`) with runs of
one-byte `0x90` nops whatever `-mtune` says, and straight-line code executes them
whenever it crosses a bundle boundary (docs/evaluation.md, "Lua, code+data"). After `as`
this pass replaces every such run in an object's executable sections by the fewest
multi-byte nops of the same total length. Nothing moves: only bytes of `0x90` runs
change, the object keeps its size and layout.

A merged nop must not swallow a position control can reach, so runs are split at
- bundle boundaries (the verifier and masked indirect branches rely on them),
- direct branch targets inside the section,
- symbol addresses in the section (functions, local labels),
- %rip-relative operand targets and relocation targets into the section (computed-goto
  label addresses, jump tables);
and a run that a relocation patches is left alone. Anything unexpected (an object that
does not parse or decode to the end) leaves the object untouched: this is an optimisation,
and the verifier checks the final image anyway.
"""

from __future__ import annotations

import bisect
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from tmebox.trusted.abi import BUNDLE_SIZE

# The recommended multi-byte nops (Intel SDM, "NOP"), by length. Longer than 11 bytes
# needs more than three prefixes, which older decoders handle slowly; GNU as stops at 11
# for the same reason. The verifier allowlists NOP, and NOP makes no memory access.
NOPS: dict[int, bytes] = {
    1: b"\x90",
    2: b"\x66\x90",
    3: b"\x0f\x1f\x00",
    4: b"\x0f\x1f\x40\x00",
    5: b"\x0f\x1f\x44\x00\x00",
    6: b"\x66\x0f\x1f\x44\x00\x00",
    7: b"\x0f\x1f\x80\x00\x00\x00\x00",
    8: b"\x0f\x1f\x84\x00\x00\x00\x00\x00",
    9: b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00",
    10: b"\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00",
    11: b"\x66\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00",
}
MAX_NOP = max(NOPS)

# Direct branches whose operand capstone prints as an absolute address.
_BRANCH = re.compile(r"^(j[a-z]+|call|loop[a-z]*)$")
# (capstone prints values below 10 in decimal)
_TARGET = re.compile(r"^(0x[0-9a-f]+|[0-9])$")
# %rip-relative operands to the same section need no relocation (`lea .L3(%rip)` of a
# computed-goto label): their target is a position too.
_RIP = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|[0-9])\]")
# Relocation types whose field is relative to its own position (P): the referenced
# address is S + A + (end of the instruction - field).
# PC32, PLT32, GOTPCREL, PC16, PC8, PC64, GOTPC32, GOTPCRELX, REX_GOTPCRELX.
_PC_RELATIVE = {2, 4, 9, 13, 15, 24, 26, 41, 42}
# Bytes each relocation type patches; any other type counts as the widest, 8.
_FIELD = 8
_FIELD_SIZE = {1: 8, 2: 4, 3: 4, 4: 4, 9: 4, 10: 4, 11: 4, 12: 2, 13: 2, 14: 1, 15: 1,
               24: 8, 25: 8, 26: 4, 32: 4, 33: 8, 41: 4, 42: 4}


@dataclass(frozen=True)
class MergeStats:
    """What merging did to one object (or why it left it alone)."""

    runs: int = 0  # runs of two or more one-byte nops replaced
    nops_before: int = 0  # one-byte nops in those runs
    nops_after: int = 0  # nops that replaced them
    skipped: str = ""  # reason the object was left untouched, if it was


def nop_fill(length: int) -> bytes:
    """The fewest recommended nops covering exactly `length` bytes."""
    out = bytearray()
    while length > 0:
        n = min(length, MAX_NOP)
        out += NOPS[n]
        length -= n
    return bytes(out)


def merge_object(path: Path) -> MergeStats:
    """Merge one-byte nop runs in every executable section of the ELF object at path."""
    data = path.read_bytes()
    try:
        patched, stats = merge_bytes(data)
    except (ELFError, capstone.CsError, struct.error, ValueError, KeyError,
            IndexError) as e:
        return MergeStats(skipped=f"{path}: {e}")
    if patched != data:
        path.write_bytes(patched)
    return stats


def merge_bytes(data: bytes) -> tuple[bytes, MergeStats]:
    """The object `data` with its nop runs merged, and what changed."""
    elf = ELFFile(io.BytesIO(data))
    if elf.get_machine_arch() != "x64" or elf["e_type"] != "ET_REL":
        return data, MergeStats(skipped="not an x86-64 relocatable object")
    sections = list(elf.iter_sections())
    if any(s["sh_type"] == "SHT_REL" for s in sections):
        # Addends in the patched bytes: targets would need reading them; not worth it.
        return data, MergeStats(skipped="SHT_REL relocations")
    code = [i for i, s in enumerate(sections)
            if s["sh_type"] == "SHT_PROGBITS" and s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR]
    decoded = {i: _decode(sections[i].data()) for i in code}
    insns = {i: v for i, v in decoded.items() if v is not None}
    if len(insns) != len(decoded):
        return data, MergeStats(skipped="a code section does not decode to its end")
    barriers: dict[int, set[int]] = {i: set() for i in code}
    patched_at: dict[int, list[tuple[int, int]]] = {i: [] for i in code}  # (offset, size)
    symbols = _symbols(sections)
    for i in code:
        for addr, size, mnemonic, op in insns[i]:
            m = _TARGET.match(op)
            if m and _BRANCH.match(mnemonic):
                barriers[i].add(int(m.group(1), 0))
            r = _RIP.search(op)
            if r:
                disp = int(r.group(2), 0)
                barriers[i].add(addr + size + (disp if r.group(1) == "+" else -disp))
    for shndx, value in symbols:
        if shndx in barriers:
            barriers[shndx].add(value)
    for rel in sections:
        if not isinstance(rel, RelocationSection):
            continue
        target = sections[rel["sh_info"]]
        # Debug information names code addresses but nothing jumps through it.
        if not target["sh_flags"] & SH_FLAGS.SHF_ALLOC:
            continue
        symtab = sections[rel["sh_link"]]
        for reloc in rel.iter_relocations():
            if rel["sh_info"] in patched_at:
                patched_at[rel["sh_info"]].append(
                    (reloc["r_offset"], _FIELD_SIZE.get(reloc["r_info_type"], _FIELD)))
            sym = symtab.get_symbol(reloc["r_info_sym"])
            shndx = sym["st_shndx"]
            if not isinstance(shndx, int) or shndx not in barriers:
                continue
            where = sym["st_value"] + reloc["r_addend"]
            barriers[shndx].add(where)
            if reloc["r_info_type"] in _PC_RELATIVE:
                barriers[shndx].add(where + 4)
                if rel["sh_info"] in insns:
                    end = _insn_end(insns[rel["sh_info"]], reloc["r_offset"])
                    if end is not None:
                        barriers[shndx].add(where + end - reloc["r_offset"])
    out = bytearray(data)
    runs = before = after = 0
    for i in code:
        base = sections[i]["sh_offset"]
        for start, length in _runs(insns[i], barriers[i], patched_at[i]):
            fill = nop_fill(length)
            out[base + start:base + start + length] = fill
            runs += 1
            before += length
            after += _count(length)
    return bytes(out), MergeStats(runs=runs, nops_before=before, nops_after=after)


def _count(length: int) -> int:
    return -(-length // MAX_NOP)


def _decode(code: bytes) -> list[tuple[int, int, str, str]] | None:
    """Linear decode of a whole section, or None if capstone stops before its end."""
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    insns = list(cs.disasm_lite(code, 0))
    end = insns[-1][0] + insns[-1][1] if insns else 0
    return insns if end == len(code) else None


def _symbols(sections: list) -> list[tuple[int, int]]:
    """(section index, value) of every symbol defined in a section."""
    out = []
    for s in sections:
        if isinstance(s, SymbolTableSection):
            for sym in s.iter_symbols():
                if isinstance(sym["st_shndx"], int):
                    out.append((sym["st_shndx"], sym["st_value"]))
    return out


def _insn_end(insns: list[tuple[int, int, str, str]], offset: int) -> int | None:
    """End address of the instruction holding byte `offset` (binary search)."""
    lo, hi = 0, len(insns)
    while lo < hi:
        mid = (lo + hi) // 2
        if insns[mid][0] + insns[mid][1] <= offset:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(insns) and insns[lo][0] <= offset:
        return insns[lo][0] + insns[lo][1]
    return None


def _runs(insns: list[tuple[int, int, str, str]], barriers: set[int],
          patched: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, length) of each mergeable run of two or more one-byte nops."""
    pieces: list[tuple[int, int]] = []
    start = length = 0

    def close() -> None:
        if length >= 2:
            pieces.append((start, length))

    for addr, size, mnemonic, _ in insns:
        one = size == 1 and mnemonic == "nop"
        if one and length and addr % BUNDLE_SIZE and addr not in barriers:
            length += 1
            continue
        close()
        start, length = (addr, 1) if one else (0, 0)
    close()
    if not patched:
        return pieces
    patched.sort()
    keep = []
    for start, length in pieces:
        # Any field overlapping [start, start+length) means the run is not just padding.
        lo = bisect.bisect_left(patched, (start - _FIELD + 1, 0))
        if any(off + size > start for off, size in
               patched[lo:bisect.bisect_left(patched, (start + length, 0))]):
            continue
        keep.append((start, length))
    return keep
