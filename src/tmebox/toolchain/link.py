"""Linking instrumented objects into a sandbox image (docs/design.md, "The runtime page
and image format"), checking the result and adding its `.tmebox_info`.

`ld` is called directly (no compiler driver, so no libgcc and no system crt)
with the tmebox linker script, the runtime page, the tmebox crt and the sandbox
libc. The image is written next to its destination under a temporary name and
renamed only after the layout checks and the verifier have accepted it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from tmebox.errors import ImageError, ToolchainError, VerificationError
from tmebox.toolchain import libc
from tmebox.toolchain.glue import glue_asm
from tmebox.toolchain.output import publish, staging_dir
from tmebox.toolchain.signatures import read_signatures
from tmebox.toolchain.unit import LEVEL_SYMBOL, assemble, run
from tmebox.trusted import abi, verifier
from tmebox.trusted.image import CpuLevel, Isolation
from tmebox.trusted.signature import Signature

DATA_DIR = Path(__file__).parent / "data"
LINKER_SCRIPT_TEMPLATE = DATA_DIR / "tmebox.ld.in"
INCLUDE_DIR = DATA_DIR / "include"  # tmebox.h

# The sandbox libc (musl) holds libm, libpthread etc. itself, as musl does.
SUPPORTED_LIBS = ("c", "m", "pthread", "rt", "dl", "util", "crypt", "resolv", "xnet")

_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4
_R_X86_64_RELATIVE = 8
_PF_RX = 5
_PF_RW = 6


def linker_script(stack_size: int = abi.DEFAULT_STACK_SIZE, *, tls: bool = False) -> str:
    """The tmebox linker script with the numbers of abi.py filled in."""
    if stack_size <= 0 or stack_size % abi.PAGE_SIZE:
        raise ToolchainError(f"stack size {stack_size} is not a positive multiple of "
                             f"{abi.PAGE_SIZE}")
    text = LINKER_SCRIPT_TEMPLATE.read_text()
    for key, value in (("RT_SECTION", abi.RT_SECTION), ("PAGE_SIZE", hex(abi.PAGE_SIZE)),
                       ("STACK_SIZE", hex(stack_size)),
                       ("TLS_SEGMENT", "tls PT_TLS FLAGS(4);" if tls else ""),
                       ("TLS", ":tls" if tls else "")):
        text = text.replace(f"@{key}@", value)
    return text


def runtime_page_asm() -> str:
    """Assembly of the runtime page: one page of int3 with the two entry symbols."""
    if not abi.RT_SYSCALL_OFFSET < abi.RT_EXIT_OFFSET < abi.RT_PAGE_SIZE:
        raise ToolchainError("abi.py: runtime entries must be ordered inside the page")
    return "\n".join([
        f'\t.section {abi.RT_SECTION},"ax",@progbits',
        f"\t.p2align {abi.RT_PAGE_SIZE.bit_length() - 1}",
        f"\t.globl {abi.RT_SYSCALL_SYMBOL}",
        f"\t.type {abi.RT_SYSCALL_SYMBOL},@function",
        f"\t.globl {abi.RT_EXIT_SYMBOL}",
        f"\t.type {abi.RT_EXIT_SYMBOL},@function",
        f"\t.fill {abi.RT_SYSCALL_OFFSET},1,0xcc",
        f"{abi.RT_SYSCALL_SYMBOL}:",
        f"\t.fill {abi.RT_EXIT_OFFSET - abi.RT_SYSCALL_OFFSET},1,0xcc",
        f"{abi.RT_EXIT_SYMBOL}:",
        f"\t.fill {abi.RT_PAGE_SIZE - abi.RT_EXIT_OFFSET},1,0xcc",
        '\t.section .note.GNU-stack,"",@progbits',
        "",
    ])


@dataclass
class ObjectScan:
    """What linking needs to know about the user's own objects."""

    exports: list[str]
    has_tls: bool
    level: CpuLevel = CpuLevel.X86_64  # the highest any object was compiled for
    data_exports: list[str] = field(default_factory=list)  # visible global OBJECT symbols
    imports: list[str] = field(default_factory=list)  # undefined, protected: TMEBOX_IMPORT
    # From the debug information: exports' and imports' signatures, or why there is none.
    definitions: dict[str, Signature | str] = field(default_factory=dict)
    declarations: dict[str, Signature | str] = field(default_factory=dict)

    def import_table(self) -> list[tuple[str, Signature]]:
        """The host functions in runtime-call order; ToolchainError if one has no signature."""
        table = []
        for name in self.imports:
            sig = self.declarations.get(name, "no debug information (compile it with tmebox cc)")
            if isinstance(sig, str):
                raise ToolchainError(f"host function {name} (TMEBOX_IMPORT): its signature "
                                     f"cannot cross the sandbox boundary: {sig}")
            table.append((name, sig))
        return table


_VISIBLE = ("STV_DEFAULT", "STV_PROTECTED")


def scan_objects(objects: list[Path]) -> ObjectScan:
    """Exports (global, visible FUNC symbols defined in the user's objects), exported data,
    host-function imports, their signatures, and TLS use."""

    names: list[str] = []
    data_names: list[str] = []
    undefined_protected: set[str] = set()
    scan = ObjectScan(exports=[], has_tls=False)
    for obj in objects:
        try:
            with obj.open("rb") as f:
                elf = ELFFile(f)
                for sec in elf.iter_sections():
                    if sec.name.startswith((".tdata", ".tbss")):
                        scan.has_tls = True
                symtab = elf.get_section_by_name(".symtab")
                if not isinstance(symtab, SymbolTableSection):
                    continue
                for sym in symtab.iter_symbols():
                    kind, bind = sym["st_info"]["type"], sym["st_info"]["bind"]
                    if sym.name == LEVEL_SYMBOL and sym["st_shndx"] == "SHN_ABS":
                        rank = min(sym["st_value"], len(CpuLevel) - 1)
                        scan.level = max(scan.level, list(CpuLevel)[rank], key=_rank)
                    visibility = sym["st_other"]["visibility"]
                    if sym["st_shndx"] == "SHN_UNDEF":
                        if visibility == "STV_PROTECTED" and sym.name:
                            undefined_protected.add(sym.name)
                    elif bind in ("STB_GLOBAL", "STB_WEAK") and visibility in _VISIBLE:
                        if kind == "STT_FUNC":
                            names.append(sym.name)
                        elif kind == "STT_OBJECT":
                            data_names.append(sym.name)
        except (OSError, ELFError) as e:
            raise ToolchainError(f"{obj}: not a readable ELF object: {e}") from None
        found = read_signatures(obj)
        scan.definitions.update(found.definitions)
        scan.declarations.update(found.declarations)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ToolchainError(f"function(s) defined in more than one object: {', '.join(dup)}")
    scan.exports = sorted(names)
    scan.data_exports = sorted(set(data_names))
    scan.imports = sorted(undefined_protected - set(names))
    return scan


def _rank(level: CpuLevel) -> int:
    return level.rank


def check_image(path: Path, *, isolation: str, export_names: list[str],
                stack_size: int, scan: ObjectScan | None = None,
                level: CpuLevel = CpuLevel.X86_64) -> dict:
    """Check a linked image against docs/design.md; returns its .tmebox_info object."""

    syms: dict[str, int] = {}
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            if len(loads) != 2:
                raise ToolchainError(f"link produced {len(loads)} PT_LOAD segments, expected 2")
            code, data = loads
            if code["p_flags"] != _PF_RX or code["p_vaddr"] != 0:
                raise ToolchainError("first PT_LOAD is not R+X at image offset 0")
            if data["p_flags"] != _PF_RW:
                raise ToolchainError("second PT_LOAD is not R+W")
            code_end = code["p_vaddr"] + code["p_memsz"]
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & _SHF_ALLOC or not sec["sh_size"]:
                    continue
                start, end = sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]
                executable = bool(sec["sh_flags"] & _SHF_EXECINSTR)
                if executable and end > code_end:
                    raise ToolchainError(f"executable section {sec.name} lies outside the "
                                         "code segment")
                if not executable and start < code_end:
                    raise ToolchainError(f"non-executable section {sec.name} lies in the "
                                         "code segment")
            for sec in elf.iter_sections():
                if isinstance(sec, RelocationSection) and sec["sh_flags"] & _SHF_ALLOC:
                    for rel in sec.iter_relocations():
                        if rel["r_info_type"] != _R_X86_64_RELATIVE:
                            raise ToolchainError(
                                f"dynamic relocation of type {rel['r_info_type']} at "
                                f"{rel['r_offset']:#x}: only R_X86_64_RELATIVE may remain in "
                                "a sandbox image")
            rt = elf.get_section_by_name(abi.RT_SECTION)
            # Objects may not add to the runtime page: it must stay one page of int3.
            if (rt is None or rt["sh_addr"] != 0 or rt["sh_size"] != abi.RT_PAGE_SIZE
                    or rt.data() != b"\xcc" * abi.RT_PAGE_SIZE):
                raise ToolchainError(f"{abi.RT_SECTION} is not exactly one page of int3 at "
                                     "image offset 0 (an object put something into it)")
            symtab = elf.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise ToolchainError("linked image has no symbol table")
            for sym in symtab.iter_symbols():
                if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                    syms.setdefault(sym.name, sym["st_value"])
    except ELFError as e:
        raise ToolchainError(f"linked image {path} is not readable ELF: {e}") from None

    def need(name: str) -> int:
        if name not in syms:
            raise ToolchainError(f"linked image lacks the symbol {name}")
        return syms[name]

    if (need(abi.RT_SYSCALL_SYMBOL) != abi.RT_SYSCALL_OFFSET
            or need(abi.RT_EXIT_SYMBOL) != abi.RT_EXIT_OFFSET):
        raise ToolchainError("runtime page entries are not at their fixed offsets")
    exports = {name: need(name) for name in export_names}
    if isolation == Isolation.CODE_DATA:
        bad = sorted(n for n, off in exports.items() if off % abi.BUNDLE_SIZE)
        if bad:
            raise ToolchainError(f"exported function(s) not {abi.BUNDLE_SIZE}-byte aligned in "
                                 f"code+data mode: {', '.join(bad)}")
    stack_top, stack_bottom = need("__tmebox_stack_top"), need("__tmebox_stack_bottom")
    if stack_top - stack_bottom != stack_size:
        raise ToolchainError("the stack gap of the linked image has the wrong size")
    interface: dict = {}
    if scan is not None:
        sigs = {n: scan.definitions.get(n, "no debug information") for n in scan.exports}
        interface = {
            "signatures": {n: s.to_json() for n, s in sigs.items() if isinstance(s, Signature)},
            "unsupported": {n: s for n, s in sigs.items() if isinstance(s, str)},
            "imports": [[n, s.to_json()] for n, s in scan.import_table()],
            "data_symbols": {n: syms[n] for n in scan.data_exports if n in syms},
        }
    return {
        **interface,
        "format": abi.IMAGE_FORMAT,
        "isolation": isolation,
        "cpu_level": level.value,
        "exports": exports,
        "stack_size": stack_size,
        "entry": need("_start"),
        "tp_slot": need(abi.TP_SYMBOL),
        "stack_top": stack_top,
        "stack_bottom": stack_bottom,
    }


def launcher_line(command: str) -> bytes:
    """`#!COMMAND` and a newline; the kernel reads at most abi.LAUNCHER_MAX bytes of it."""
    line = f"#!{command}\n".encode()
    if len(line) > abi.LAUNCHER_MAX or "\n" in command:
        raise ToolchainError(f"launcher {command!r}: a #! line is one line of at most "
                             f"{abi.LAUNCHER_MAX} bytes")
    return line


def verify(path: Path, shown_as: Path) -> None:
    """Run the verifier on a finished image; a rejected image is never renamed into place."""
    try:
        verdict = verifier.verify_file(path)
    except ImageError as e:
        raise VerificationError(f"{shown_as}: {e}".replace(str(path), str(shown_as))) from None
    if not verdict.ok:
        raise VerificationError(verdict.summary().replace(str(path), str(shown_as)))


def link_image(objects: list[Path], output: Path, *, isolation: str, libs: list[str] | None = None,
               archives: list[Path] | None = None, ld_flags: list[str] | None = None,
               stack_size: int = abi.DEFAULT_STACK_SIZE, run_verifier: bool = True,
               launcher: str | None = None, level: CpuLevel = CpuLevel.X86_64) -> dict:
    """Link instrumented objects (and archives of them) into the sandbox image output;
    returns its .tmebox_info.

    The exports are the global functions of objects (not of archive members). ld_flags
    come before tmebox's own, which win where they disagree. launcher: a `#!` line
    written before the image, so that the file runs as a program (trusted.image skips it).
    The image's CPU level is the highest of `level` and the objects' (archive members are
    not looked into: the verifier names an instruction beyond the level).
    """
    if isolation not in abi.ISOLATION_MODES:
        raise ToolchainError(f"unsupported isolation {isolation!r}")
    for lib in libs or []:
        if lib not in SUPPORTED_LIBS:
            raise ToolchainError(f"-l{lib}: unknown library (the sandbox libc provides "
                                 f"{', '.join('-l' + x for x in SUPPORTED_LIBS)})")
    prefix = libc.ensure_libc(isolation)
    scan = scan_objects(objects)
    level = max(level, scan.level, key=_rank)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmebox-ld-", dir=staging_dir(output)) as tmp:
        tmpdir = Path(tmp)
        script = tmpdir / "tmebox.ld"
        script.write_text(linker_script(stack_size, tls=scan.has_tls))
        rt_obj = tmpdir / "rt.o"
        res = subprocess.run(["as", "--64", "-o", str(rt_obj), "-"], input=runtime_page_asm(),
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolchainError(f"assembling the runtime page failed: {res.stderr.strip()}")
        glue_obj = tmpdir / "glue.o"
        assemble(glue_asm(scan.import_table(), level), glue_obj, isolation=isolation,
                 source="<tmebox glue>")
        linked = tmpdir / "image.elf"
        keep = [f"--undefined={name}" for name in scan.exports]  # even with --gc-sections
        run([
            "ld", *(ld_flags or []), *keep, "-static", "-pie", "--no-dynamic-linker",
            "-z", "text", "-z", "noexecstack",
            "-z", "norelro", "-z", "max-page-size=4096", "-z", "common-page-size=4096",
            "--hash-style=gnu", "--no-undefined", "--strip-debug", "-nostdlib",
            "-T", str(script),
            "-o", str(linked), str(rt_obj), str(prefix / "lib" / libc.CRT_OBJECT),
            str(glue_obj), *[str(o) for o in objects],
            "--start-group", *[str(a) for a in archives or []], str(prefix / "lib" / "libc.a"),
            "--end-group",
        ], f"linking {output}")
        try:
            info = check_image(linked, isolation=isolation,
                               export_names=[*scan.exports, abi.CALL_THUNK_SYMBOL],
                               stack_size=stack_size, scan=scan, level=level)
        except ToolchainError as e:
            raise ToolchainError(f"{output}: {e}") from None
        info_file = tmpdir / "info.json"
        info_file.write_text(json.dumps(info, sort_keys=True))
        final = tmpdir / "image.box"
        run(["objcopy", "--add-section", f"{abi.INFO_SECTION}={info_file}",
              "--set-section-flags", f"{abi.INFO_SECTION}=readonly,contents",
              str(linked), str(final)], f"adding {abi.INFO_SECTION} to {output}")
        if run_verifier:
            verify(final, output)
        if launcher is not None:
            final.write_bytes(launcher_line(launcher) + final.read_bytes())
        final.chmod(0o755)
        publish(final, output)
    return info
