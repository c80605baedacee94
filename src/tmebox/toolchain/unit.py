"""One translation unit: C or assembly -> rewritten assembly -> an instrumented object.

The step both `tmebox cc` (tmebox.toolchain.cc) and the sandbox libc build
(tmebox.toolchain.libc) run: `gcc -S` -> `rewrite_assembly` -> `as` -> loop pads (`as`
again) -> nop merge. It depends on nothing of the toolchain but the rewriter, the loop pads
(toolchain.loops) and the nop merge, and the libc build key hashes this file whole.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tmebox.errors import CompileError, RewriteError, ToolchainError
from tmebox.toolchain import levels, loops, nopmerge
from tmebox.toolchain.rewriter import rewrite_assembly
from tmebox.trusted import abi
from tmebox.trusted.image import CpuLevel, Isolation

__all__ = ["FIT_LOOPS", "LEVEL_SYMBOL", "NATIVE", "Compiler", "Lang", "assemble",
           "calls_end_bundles", "compile_unit", "compiler_command", "find_compiler",
           "language_of", "run", "sandbox_cflags"]


class Lang(StrEnum):
    """What a source is, by gcc's `-x` names."""

    C = "c"
    ASM = "assembler"
    ASM_CPP = "assembler-with-cpp"


C_SUFFIXES = (".c",)
_SUFFIX_LANG = {".c": Lang.C, ".s": Lang.ASM, ".S": Lang.ASM_CPP, ".sx": Lang.ASM_CPP}
SOURCE_SUFFIXES = tuple(_SUFFIX_LANG)


def language_of(path: Path) -> Lang | None:
    """A source's language by its suffix, as gcc decides it; None: not a source."""
    return _SUFFIX_LANG.get(path.suffix)

# Short innermost loops padded to lie inside a 64-byte line (toolchain.loops), for speed,
# not safety: a short loop across two lines runs up to 1.7x slower on Zen 3, and the
# instrumentation lengthens loops, so that they straddle one more often
# (docs/evaluation.md, "Loops across a 64-byte line"). Both modes; the baseline is gcc's.
FIT_LOOPS = True
# Assemblies with loop pads after the first: the pads move code, which can change the
# size of a later loop (jump relaxation; bundle padding in code+data mode).
_FIT_ROUNDS = 3
# Native mode: plain musl, no rewriter; used for baselines only.
NATIVE = "native"
# A local absolute symbol in every object compiled for a level above x86-64: the level's
# rank, so that the link takes the highest (link.scan_objects).
LEVEL_SYMBOL = "__tmebox_cpu_level"


@dataclass(frozen=True)
class Compiler:
    """A system C compiler and where its own headers (stddef.h, intrinsics) live."""

    path: str
    include_dir: str


@functools.cache
def find_compiler(name: str = "gcc") -> Compiler:
    """Locate gcc or clang; ToolchainError if it is not installed."""
    if name not in ("gcc", "clang") and not name.endswith(("gcc", "clang")):
        raise ToolchainError(f"unsupported compiler {name!r}: use gcc or clang")
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"compiler {name!r} not found on PATH")
    res = subprocess.run([path, "-print-file-name=include"], capture_output=True, text=True)
    include_dir = res.stdout.strip()
    if res.returncode != 0 or not os.path.isdir(include_dir):
        raise ToolchainError(f"{name} -print-file-name=include failed: {res.stderr.strip()}")
    return Compiler(path=path, include_dir=include_dir)


def sandbox_cflags(isolation: str, level: CpuLevel = CpuLevel.X86_64) -> list[str]:
    """The code-generation flags docs/design.md requires of every sandboxed unit, for the
    CPU level's instructions."""
    if isolation == NATIVE:
        return []
    if isolation not in abi.ISOLATION_MODES:
        raise ToolchainError(
            f"unsupported isolation {isolation!r}: choose one of {', '.join(abi.ISOLATION_MODES)}"
        )
    flags = list(abi.COMMON_CFLAGS)
    if level is not CpuLevel.X86_64:
        flags.append(f"-march={level.value}")
    if isolation == Isolation.CODE_DATA:
        flags += abi.CODE_DATA_CFLAGS
    return flags


# ---------------------------------------------------------------------------
# one translation unit


def run(cmd: list[str], what: str, *, stdin: str | None = None,
         show_warnings: bool = False) -> str:
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    except OSError as e:
        raise ToolchainError(f"{what}: cannot run {cmd[0]}: {e}") from None
    if res.returncode != 0:
        detail = res.stderr.strip()
        first = _first_error_line(detail) or f"{cmd[0]} exited with status {res.returncode}"
        raise CompileError(what, first, detail)
    if show_warnings and res.stderr:
        sys.stderr.write(res.stderr)  # the compiler's warnings, as it prints them
    return res.stdout


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower() or "undefined" in line:
            return line.strip()
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


_LINE_MARKER = re.compile(r'^#\s*(\d+)\s+"([^"]*)"')


def _asm_statement_location(asm: str, asm_line: int) -> str | None:
    """file:line of the C asm statement that produced a line of gcc's -S output, if any.

    gcc puts `# LINE "FILE" 1` before the text of every inline asm statement
    (inside #APP ... #NO_APP); LINE is where the statement starts in the C file.
    """
    lines = asm.splitlines()
    for i in range(min(asm_line, len(lines)) - 1, -1, -1):
        text = lines[i].strip()
        if text == "#NO_APP":
            return None
        m = _LINE_MARKER.match(text)
        if m:
            return f"{m.group(2)}:{m.group(1)}"
    return None


def rewrite(text: str, *, isolation: str, source: str, align_calls: bool = False,
            level: CpuLevel = CpuLevel.X86_64) -> str:
    """rewrite_assembly, with errors in inline asm named by their C line."""
    try:
        return rewrite_assembly(text, isolation=isolation, source=source,
                                align_calls=align_calls, level=level.value)
    except RewriteError as e:
        # The rewriter names a line of gcc's assembly; for inline asm in a C file
        # the C line is what the user can act on.
        m = re.match(re.escape(source) + r":(\d+):\s*(.*)", str(e), re.S)
        if source.endswith(C_SUFFIXES) and m:
            where = _asm_statement_location(text, int(m.group(1)))
            if where:
                raise RewriteError(f"{where}: in inline assembly: {m.group(2)}") from None
        raise


def compiler_command(flags: Sequence[str], *, isolation: str, compiler: str,
                     lang: Lang, level: CpuLevel = CpuLevel.X86_64) -> list[str]:
    """The compiler with flags, then the isolation mode's own flags (so that none of flags
    undoes one of those), then `-x lang`: only the step (-S, -E) and the files follow."""
    return [find_compiler(compiler).path, *flags, *sandbox_cflags(isolation, level),
            "-x", lang.value]


def compile_unit(src: Path, obj: Path, *, isolation: str, flags: Sequence[str],
                 compiler: str = "gcc", lang: Lang | None = None,
                 as_flags: Sequence[str] = (), level: CpuLevel = CpuLevel.X86_64) -> None:
    """Compile one source (C, or assembly with or without cpp) into an instrumented object
    (native mode: not instrumented) for the CPU level; lang defaults to what src's suffix
    says. Functions beyond the level (target attributes) become traps (toolchain.levels).

    flags are passed to the compiler as they are (-O, -I, -D, -W, -f, -isystem, ...),
    before the isolation mode's own (compiler_command).
    """
    lang = lang or language_of(src)
    if lang is None:
        raise ToolchainError(f"{src}: unsupported source type (expected .c, .s or .S)")
    gcc = compiler_command(flags, isolation=isolation, compiler=compiler, lang=lang,
                           level=level)
    if lang is Lang.C:
        asm = run([*gcc, "-S", "-o", "-", str(src)], f"compiling {src}", show_warnings=True)
    elif lang is Lang.ASM_CPP:
        asm = run([*gcc, "-E", "-P", "-o", "-", str(src)], f"preprocessing {src}",
                  show_warnings=True)
    else:
        try:
            asm = src.read_text()
        except OSError as e:
            raise ToolchainError(f"cannot read {src}: {e.strerror}") from None
    if isolation == NATIVE or lang is not Lang.C:
        # (hand-written assembly says what it means: nothing in it becomes a trap)
        assemble(asm, obj, isolation=isolation, source=str(src), as_flags=as_flags,
                 level=level)
        return
    error: RewriteError | None = None
    try:
        assemble(asm, obj, isolation=isolation, source=str(src), as_flags=as_flags,
                 level=level)
        if not levels.beyond_level(obj, isolation, level):
            return
    except RewriteError as refused:
        error = refused  # perhaps only because a function is beyond the level
    # Judge gcc's own code, without inline asm: what the programmer wrote stays an error.
    assemble_text(levels.without_inline_asm(asm), obj, str(src), as_flags)
    beyond = levels.beyond_level(obj, isolation, level)
    if not beyond and error is not None:
        raise error
    if beyond:
        asm = levels.stub_functions(asm, set(beyond), str(src), level)
    assemble(asm, obj, isolation=isolation, source=str(src), as_flags=as_flags, level=level)


def assemble(asm: str, obj: Path, *, isolation: str, source: str,
             as_flags: Sequence[str] = (), level: CpuLevel = CpuLevel.X86_64) -> None:
    """Rewrite assembly text for isolation (native: as it is) and the CPU level, and
    assemble it into obj.

    code+data: the assembler pads each call group only as far as its call needs to
    end a bundle (_assemble_aligned_calls); if that does not work out, every call
    group is a whole bundle, which is always correct but costs up to 58 nop bytes a call.
    Then short loops are padded to lie inside a line (_fit_loops).
    """
    if isolation == NATIVE:
        assemble_text(asm, obj, source, as_flags)
        return
    if level is not CpuLevel.X86_64:
        asm += f"\n\t.set {LEVEL_SYMBOL}, {level.rank}\n"
    first = [*as_flags, "-L"] if FIT_LOOPS else as_flags  # (local labels: loop heads)
    text = (_assemble_aligned_calls(asm, obj, source, first, level)
            if isolation == Isolation.CODE_DATA else None)
    if text is None:
        text = rewrite(asm, isolation=isolation, source=source, level=level)
        assemble_text(text, obj, source, first)
    if FIT_LOOPS:
        _fit_loops(text, obj, isolation, source, as_flags)
    nopmerge.merge_object(obj)  # bundle padding: one-byte nops -> multi-byte nops


def _fit_loops(text: str, obj: Path, isolation: str, source: str,
               as_flags: Sequence[str]) -> None:
    """Reassemble text, as the rewriter made it and `as -L` assembled it into obj, with
    its short innermost loops padded to lie inside a line (toolchain.loops); obj ends up
    without local symbols. Each loop's pad is for the largest size it had in any layout.
    If an assembly with pads fails, or (code+data) leaves a call not ending a bundle,
    text is assembled as it is."""
    sizes: dict[str, int] = {}
    found = loops.heads(obj)
    padded = text
    for _ in range(_FIT_ROUNDS):
        grown = {label: n for label, n in found.items() if n > sizes.get(label, 0)}
        if not grown:
            break
        sizes |= grown
        padded = loops.pad(text, sizes)
        try:
            run(_as(obj, [*as_flags, "-L"]), f"assembling {source}", stdin=padded)
        except ToolchainError:
            padded = text
            break
        found = loops.heads(obj)
    if padded is not text and isolation == Isolation.CODE_DATA and calls_end_bundles(obj) < 0:
        padded = text
    assemble_text(padded, obj, source, as_flags)  # (without the local labels)


def _as(obj: Path, as_flags: Sequence[str]) -> list[str]:
    return ["as", *as_flags, "--64", "--noexecstack", "-o", str(obj), "-"]


def assemble_text(asm: str, obj: Path, source: str, as_flags: Sequence[str] = ()) -> None:
    """`as` on already rewritten text; on failure the text is kept for the user to read."""
    try:
        run(_as(obj, as_flags), f"assembling {source}", stdin=asm)
    except ToolchainError as e:
        # Keep the rewritten text (`as` only names "{standard input}:LINE") where
        # neither a cleaned-up build directory nor the user's output directory is.
        try:
            fd, keep = tempfile.mkstemp(prefix=f"tmebox-{Path(source).stem}-",
                                        suffix=".failed.s")
            with os.fdopen(fd, "w") as f:
                f.write(asm)
        except OSError:
            raise e from None
        raise ToolchainError(f"{e}\n(rewritten assembly kept in {keep})") from None


def _assemble_aligned_calls(asm: str, obj: Path, source: str, as_flags: Sequence[str] = (),
                            level: CpuLevel = CpuLevel.X86_64) -> str | None:
    """Assemble code+data asm into obj with call groups padded by the assembler and
    return the rewritten text; None: not done, obj is to be rebuilt with whole-bundle
    call groups.

    Rewrite errors propagate (the fixed scheme would raise the same). An assembler
    error, or any call in the object that does not end a bundle (say, a code section
    re-entered under another group, so that the padding counted from the wrong
    label), returns None: the object is never trusted without the decoding check.
    """
    text = rewrite(asm, isolation="code+data", source=source, align_calls=True, level=level)
    try:
        run(_as(obj, as_flags), f"assembling {source}", stdin=text)
    except ToolchainError:
        return None
    return text if calls_end_bundles(obj) >= 0 else None


def calls_end_bundles(obj: Path) -> int:
    """Number of calls in obj's code if every one ends a bundle (in a section aligned
    to a bundle), else -1. Decodes each executable section from its start.
    """
    import capstone
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    calls = 0
    with obj.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                continue
            aligned = sec["sh_addralign"] % abi.BUNDLE_SIZE == 0
            for addr, size, mnemonic, _ops in md.disasm_lite(sec.data(), 0):
                if mnemonic.startswith("call"):
                    if not aligned or (addr + size) % abi.BUNDLE_SIZE:
                        return -1
                    calls += 1
    return calls
