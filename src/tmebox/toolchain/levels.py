"""Functions whose code needs more than the unit's CPU level, and their trap stubs.

gcc compiles a function with `__attribute__((target("avx2")))` (or `target("pclmul")`,
`target("avx512f")`...) for that extension whatever `-march` says, and a program calls it only
after asking cpuid (or `__builtin_cpu_supports`) whether the CPU has it. In a sandbox, cpuid
answers from the image's level (glue.py, data/cpu_model.c). So such a function is kept when
the verifier accepts it at the unit's level, and otherwise its body is replaced by `ud2`: the
program builds at every level, and dispatch never calls what was removed. The verifier's own
rules decide (trusted.rules.classify), so nothing is removed that the verifier would take, and
nothing else is ever removed: an instruction refused for another reason stays an error, and
so does one in inline asm or an assembly source (what the programmer wrote by hand).
"""

from __future__ import annotations

import sys
from pathlib import Path

import iced_x86 as ix
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from tmebox.trusted.image import CpuLevel
from tmebox.trusted.rules import LEVEL_OF_FEATURE, VEX_FEATURES, classify

__all__ = ["beyond_level", "stub_functions", "without_inline_asm"]

# Extensions no level has, which target attributes ask for (legacy encodings; every VEX and
# EVEX instruction counts as an extension too).
_EXTENSIONS = frozenset(getattr(ix.CpuidFeature, n) for n in (
    "AES", "PCLMULQDQ", "SHA", "GFNI", "ADX", "SSE4A", "VAES", "VPCLMULQDQ"))
_LEVELLED = frozenset(LEVEL_OF_FEATURE) | VEX_FEATURES


def _extension(ins: ix.Instruction) -> bool:
    features = set(ins.cpuid_features())
    return (ins.encoding in (ix.EncodingKind.VEX, ix.EncodingKind.EVEX)
            or bool(features & (_EXTENSIONS | _LEVELLED)))


def beyond_level(obj: Path, isolation: str, level: CpuLevel) -> dict[str, str]:
    """Function name -> the verifier's reason, for each function in obj that holds an
    extension instruction the verifier refuses at `level`."""
    found: dict[str, str] = {}
    with obj.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        funcs: dict[int, list[tuple[int, int, str]]] = {}
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and isinstance(sym["st_shndx"], int):
                    funcs.setdefault(sym["st_shndx"], []).append(
                        (sym["st_value"], sym["st_value"] + sym["st_size"], sym.name))
        for index, sec in enumerate(elf.iter_sections()):
            if not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR or sec["sh_type"] != "SHT_PROGBITS":
                continue
            code = sec.data()
            for ins in ix.Decoder(64, code, ip=0):
                if not _extension(ins):
                    continue
                raw = code[ins.ip:ins.ip + ins.len]
                kind = classify(raw, isolation, level)
                if kind.rule not in ("cpu-level", "allowed-instruction"):
                    continue
                name = next((n for lo, hi, n in funcs.get(index, ()) if lo <= ins.ip < hi), None)
                if name is not None:
                    found.setdefault(name, f"{ix.Formatter(ix.FormatterSyntax.GAS).format(ins)}"
                                           f": {kind.reason}")
    return found


def _is_instruction(s: str) -> bool:
    """A stripped line of gcc's assembly that is an instruction (not a label, a directive,
    a comment or empty: those stay, for the labels debug information refers to)."""
    return bool(s) and not s.startswith((".", "#")) and not s.endswith(":")


def without_inline_asm(asm: str) -> str:
    """gcc's assembly without the instructions of its inline asm (between #APP and
    #NO_APP)."""
    out: list[str] = []
    inside = False
    for line in asm.split("\n"):
        s = line.strip()
        inside = (inside or s == "#APP") and s != "#NO_APP"
        if not (inside and _is_instruction(s)):
            out.append(line)
    return "\n".join(out)


def stub_functions(asm: str, names: set[str], source: str, level: CpuLevel) -> str:
    """gcc's assembly with the instructions of each function in names replaced by one ud2
    (labels and directives stay, so debug information and jump tables still assemble)."""
    out: list[str] = []
    inside: str | None = None
    for line in asm.split("\n"):
        s = line.strip()
        if inside is None:
            out.append(line)
            if s.endswith(":") and s[:-1].strip('"') in names:
                inside = s[:-1].strip('"')
                out.append("\tud2")
            continue
        if s.startswith(".size") and s[5:].split(",")[0].strip().strip('"') == inside:
            inside = None
            out.append(line)
        elif not _is_instruction(s):
            out.append(line)
    for name in sorted(names):
        print(f"tmebox cc: note: {source}: {name}() needs more than {level.value}: it traps "
              "if called (cpuid and __builtin_cpu_supports in the sandbox never report it)",
              file=sys.stderr)
    return "\n".join(out)
