"""`tmebox cc`: C or assembly -> instrumented objects -> a verified sandbox image.

Every translation unit goes `gcc -S` -> `rewrite_assembly` -> `as`; the image is
linked by `ld` (no compiler driver, no libgcc) with the tmebox linker script,
the tmebox crt and the sandbox libc of the same isolation mode, then checked
(layout, relocations, exports) and verified before it is renamed into place.
The sandbox libc build (tmebox.toolchain.libc) uses the same rewrite-and-assemble
step. Linking is in tmebox.toolchain.link.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tmebox.errors import ToolchainError
from tmebox.trusted import abi

OPT_LEVELS = ("0", "1", "2", "3", "s", "g")
C_SUFFIXES = (".c",)
ASM_SUFFIXES = (".s",)
CPP_ASM_SUFFIXES = (".S",)
SOURCE_SUFFIXES = C_SUFFIXES + ASM_SUFFIXES + CPP_ASM_SUFFIXES
# Native mode: plain musl, no rewriter; used for baselines only.
NATIVE = "native"


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


def sandbox_cflags(isolation: str) -> list[str]:
    """The code-generation flags docs/design.md requires of every sandboxed unit."""
    if isolation == NATIVE:
        return []
    if isolation not in abi.ISOLATION_MODES:
        raise ToolchainError(
            f"unsupported isolation {isolation!r}: choose one of {', '.join(abi.ISOLATION_MODES)}"
        )
    flags = list(abi.COMMON_CFLAGS)
    if isolation == "code+data":
        flags += abi.CODE_DATA_CFLAGS
    return flags


# ---------------------------------------------------------------------------
# one translation unit


def _run(cmd: list[str], what: str, *, stdin: str | None = None,
         show_warnings: bool = False) -> str:
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    except OSError as e:
        raise ToolchainError(f"{what}: cannot run {cmd[0]}: {e}") from None
    if res.returncode != 0:
        detail = res.stderr.strip()
        first = _first_error_line(detail) or f"{cmd[0]} exited with status {res.returncode}"
        raise ToolchainError(f"{what}: {first}\n{detail}" if detail else f"{what}: {first}")
    if show_warnings and res.stderr:
        sys.stderr.write(res.stderr)  # the compiler's warnings, as it prints them
    return res.stdout


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower():
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


def _rewrite(text: str, *, isolation: str, source: str, align_calls: bool = False) -> str:
    from tmebox.errors import RewriteError
    from tmebox.toolchain.rewriter import rewrite_assembly

    try:
        return rewrite_assembly(text, isolation=isolation, source=source,
                                align_calls=align_calls)
    except RewriteError as e:
        # The rewriter names a line of gcc's assembly; for inline asm in a C file
        # the C line is what the user can act on.
        m = re.match(re.escape(source) + r":(\d+):\s*(.*)", str(e), re.S)
        if source.endswith(C_SUFFIXES) and m:
            where = _asm_statement_location(text, int(m.group(1)))
            if where:
                raise RewriteError(f"{where}: in inline assembly: {m.group(2)}") from None
        raise


def compile_unit(src: Path, obj: Path, *, isolation: str, flags: list[str],
                 compiler: str = "gcc") -> None:
    """Compile one .c/.s/.S file into an instrumented object (native mode: not instrumented).

    flags are passed to the compiler as they are (-O, -I, -D, -isystem, ...);
    the isolation mode's own flags are added here.
    """
    cc = find_compiler(compiler)
    suffix = src.suffix
    mode_flags = sandbox_cflags(isolation)
    if suffix in C_SUFFIXES:
        asm = _run([cc.path, *mode_flags, *flags, "-S", "-o", "-", str(src)], f"compiling {src}",
                   show_warnings=True)
    elif suffix in CPP_ASM_SUFFIXES:
        asm = _run([cc.path, *mode_flags, *flags, "-E", "-P", "-o", "-", str(src)],
                   f"preprocessing {src}", show_warnings=True)
    elif suffix in ASM_SUFFIXES:
        try:
            asm = src.read_text()
        except OSError as e:
            raise ToolchainError(f"cannot read {src}: {e.strerror}") from None
    else:
        raise ToolchainError(f"{src}: unsupported source type (expected .c, .s or .S)")
    assemble(asm, obj, isolation=isolation, source=str(src))


def assemble(asm: str, obj: Path, *, isolation: str, source: str) -> None:
    """Rewrite assembly text for isolation (native: as it is) and assemble it into obj.

    code+data: the assembler pads each call group only as far as its call needs to
    end a bundle (_assemble_aligned_calls); if that does not work out, every call
    group is a whole bundle, which is always correct but costs up to 58 nop bytes a call.
    """
    if isolation == "code+data" and _assemble_aligned_calls(asm, obj, source):
        pass
    else:
        if isolation != NATIVE:
            asm = _rewrite(asm, isolation=isolation, source=source)
        _as(asm, obj, source)
    if isolation != NATIVE:
        from tmebox.toolchain import nopmerge

        nopmerge.merge_object(obj)  # bundle padding: one-byte nops -> multi-byte nops


def _as(asm: str, obj: Path, source: str) -> None:
    try:
        _run(["as", "--64", "--noexecstack", "-o", str(obj), "-"], f"assembling {source}",
             stdin=asm)
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


def _assemble_aligned_calls(asm: str, obj: Path, source: str) -> bool:
    """Assemble code+data asm into obj with call groups padded by the assembler;
    False: not done, obj is to be rebuilt with whole-bundle call groups.

    Rewrite errors propagate (the fixed scheme would raise the same). An assembler
    error, or any call in the object that does not end a bundle (say, a code section
    re-entered under another group, so that the padding counted from the wrong
    label), returns False: the object is never trusted without the decoding check.
    """
    text = _rewrite(asm, isolation="code+data", source=source, align_calls=True)
    try:
        _run(["as", "--64", "--noexecstack", "-o", str(obj), "-"], f"assembling {source}",
             stdin=text)
    except ToolchainError:
        return False
    return calls_end_bundles(obj) >= 0


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


# ---------------------------------------------------------------------------
# the `tmebox cc` entry point


def _compile_flags(isolation: str, opt: str, include_dirs: list[Path], defines: list[str],
                   compiler: str) -> list[str]:
    from tmebox.toolchain import libc

    if opt not in OPT_LEVELS:
        raise ToolchainError(f"-O{opt}: unknown optimisation level (use one of "
                             f"{', '.join(OPT_LEVELS)})")
    cc = find_compiler(compiler)
    # A first build of the sandbox libc takes a minute or two: say so on stderr.
    prefix = libc.ensure_libc(isolation, progress=True)
    flags = [f"-O{opt}"]
    flags += [f"-I{d}" for d in include_dirs]
    flags += [f"-D{d}" for d in defines]
    flags += ["-nostdinc", "-isystem", str(prefix / "include"), "-isystem", cc.include_dir]
    return flags


def build(sources: list[Path], output: Path | None, isolation: str, opt: str = "2",
          include_dirs: list[Path] | None = None, defines: list[str] | None = None,
          compile_only: bool = False, compiler: str = "gcc", libs: list[str] | None = None,
          *, stack_size: int = abi.DEFAULT_STACK_SIZE) -> list[Path]:
    """Compile sources (.c, .s, .S; .o too when linking) into one verified image, or objects.

    Returns the paths written: the image, or with compile_only one object per source
    (named like gcc does: foo.c -> foo.o in the current directory, or output).
    """
    from tmebox.toolchain import link

    include_dirs = include_dirs or []
    defines = defines or []
    libs = libs or []
    sandbox_cflags(isolation)  # rejects an unknown mode before any work
    if not sources:
        raise ToolchainError("no input files")
    for src in sources:
        if not src.is_file():
            raise ToolchainError(f"{src}: no such file")
        allowed = SOURCE_SUFFIXES if compile_only else SOURCE_SUFFIXES + (".o",)
        if src.suffix not in allowed:
            raise ToolchainError(f"{src}: unsupported input type {src.suffix or '(none)'} "
                                 f"(expected {', '.join(allowed)})")
    flags = _compile_flags(isolation, opt, include_dirs, defines, compiler)

    if compile_only:
        if output is not None and len(sources) > 1:
            raise ToolchainError("-o with -c needs exactly one source file")
        outs = [output if output is not None else Path(src.with_suffix(".o").name)
                for src in sources]
        for src, out in zip(sources, outs, strict=True):
            tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
            try:
                compile_unit(src, tmp, isolation=isolation, flags=flags, compiler=compiler)
                os.replace(tmp, out)
            except OSError as e:
                raise ToolchainError(f"cannot write {out}: {e.strerror or e}") from None
            finally:
                tmp.unlink(missing_ok=True)
        return outs

    if output is None:
        output = Path(sources[0].with_suffix(".box").name)
    with tempfile.TemporaryDirectory(prefix="tmebox-cc-") as tmp:
        objects = [src if src.suffix == ".o" else Path(tmp) / f"{i}-{src.stem}.o"
                   for i, src in enumerate(sources)]
        todo = [(src, obj) for src, obj in zip(sources, objects, strict=True) if src != obj]
        # The compiler runs in a subprocess, so threads compile files in parallel;
        # map() re-raises the first failure in source order.
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1) or 1) as pool:
            list(pool.map(lambda job: compile_unit(job[0], job[1], isolation=isolation,
                                                   flags=flags, compiler=compiler), todo))
        try:
            link.link_image(objects, output, isolation=isolation, libs=libs,
                            stack_size=stack_size)
        except OSError as e:
            raise ToolchainError(f"cannot write {output}: {e.strerror or e}") from None
    return [output]
