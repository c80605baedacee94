"""Reader of tmebox sandbox images (docs/design.md "The runtime page and image format").

The verifier and the runtime both see an image only through `Image`, so what is verified is
exactly what gets mapped: the R+X bytes, the R+W bytes, the relocations. Every malformed input
becomes an `ImageError` naming the file and the problem; pyelftools is only asked about ranges
already checked against the file size.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from tmebox.trusted import abi
from tmebox.trusted.errors import ImageError

R_X86_64_RELATIVE = 8
EHDR_SIZE = 64
PHDR_SIZE = 56
# An image must fit in its window between the low guard (where it is placed) and the high guard.
MAX_IMAGE_SIZE = abi.WINDOW_SIZE - abi.IMAGE_WINDOW_OFFSET - abi.GUARD_SIZE
REQUIRED_SYMBOLS = (
    abi.RT_SYSCALL_SYMBOL,
    abi.RT_EXIT_SYMBOL,
    abi.TP_SYMBOL,
    "__tmebox_stack_bottom",
    "__tmebox_stack_top",
)


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD segment: `offset` is its image offset (= p_vaddr of the static PIE).

    The code segment's `data` is padded with int3 to a whole page: that is what gets mapped.
    """

    offset: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.offset + self.memsz


@dataclass(frozen=True)
class Tls:
    """The PT_TLS template: `offset` is its image offset, `data` its initialised part."""

    offset: int
    data: bytes
    memsz: int
    align: int


@dataclass(frozen=True)
class ImageInfo:
    """The `.tmebox_info` JSON object."""

    isolation: str
    exports: dict[str, int]
    stack_size: int
    entry: int
    tp_slot: int


@dataclass(frozen=True)
class Image:
    name: str
    sha256: str
    size: int  # end of the highest segment (image offsets [0, size) belong to the image)
    code: Segment  # R+X, starts with the .tmebox_rt page
    data: Segment  # R+W
    rt_range: tuple[int, int]  # image offsets of the .tmebox_rt page
    symbols: dict[str, int]  # the REQUIRED_SYMBOLS
    info: ImageInfo
    relocations: tuple[tuple[int, int], ...]  # R_X86_64_RELATIVE (offset, addend)
    phdrs: bytes  # the program header table, for AT_PHDR on the initial stack
    phnum: int
    tls: Tls | None = field(default=None)

    @property
    def isolation(self) -> str:
        return self.info.isolation

    @property
    def entry(self) -> int:
        return self.info.entry

    @property
    def exports(self) -> dict[str, int]:
        return self.info.exports

    @classmethod
    def load(cls, path: Path | str) -> Image:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{path}: cannot read image: {e.strerror or e}") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<image>") -> Image:
        return _Reader(bytes(data), name).read()


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.raw = data
        self.name = name

    def fail(self, problem: str) -> ImageError:
        return ImageError(f"{self.name}: {problem}")

    def read(self) -> Image:
        self.check_header()
        try:
            elf = ELFFile(BytesIO(self.raw))
            return self.read_elf(elf)
        except ImageError:
            raise
        # pyelftools (and construct under it) raise many unrelated types on corrupt input.
        except Exception as e:
            raise self.fail(f"malformed ELF ({type(e).__name__}: {e})") from None

    def check_header(self) -> None:
        """Checks pyelftools would trip over, done on raw bytes so the messages are clear."""
        raw = self.raw
        if len(raw) < EHDR_SIZE or raw[:4] != b"\x7fELF":
            raise self.fail("not an ELF file")
        if raw[4] != 2 or raw[5] != 1:
            raise self.fail("not a little-endian ELF64 file")
        e_type, e_machine = struct.unpack_from("<HH", raw, 16)
        if e_machine != 62:
            raise self.fail(f"machine {e_machine} is not x86-64")
        if e_type != 3:
            raise self.fail("not a static PIE (ELF type is not ET_DYN)")
        phoff, shoff = struct.unpack_from("<QQ", raw, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", raw, 54)
        if phentsize != PHDR_SIZE or phnum == 0 or phoff + phnum * PHDR_SIZE > len(raw):
            raise self.fail("program header table missing or outside the file")
        if shentsize != 64 or shnum == 0 or shoff + shnum * 64 > len(raw) or shstrndx >= shnum:
            raise self.fail("section header table missing or outside the file")

    def read_elf(self, elf: ELFFile) -> Image:
        code, data, tls = self.read_segments(elf)
        size = data.end
        sections = self.read_sections(elf)
        rt_range = self.read_rt(sections, code)
        symbols = self.read_symbols(elf)
        info = self.read_info(sections, code, data, symbols)
        relocations = self.read_relocations(elf, data)
        e_phoff = elf.header["e_phoff"]
        phnum = elf.header["e_phnum"]
        return Image(
            name=self.name,
            sha256=hashlib.sha256(self.raw).hexdigest(),
            size=size,
            code=code,
            data=data,
            rt_range=rt_range,
            symbols=symbols,
            info=info,
            relocations=relocations,
            phdrs=self.raw[e_phoff:e_phoff + phnum * PHDR_SIZE],
            phnum=phnum,
            tls=tls,
        )

    def file_range(self, what: str, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.raw):
            raise self.fail(f"{what} (file offset {offset:#x}, size {size:#x}) lies outside "
                            f"the file ({len(self.raw):#x} bytes)")
        return self.raw[offset:offset + size]

    def read_segments(self, elf: ELFFile) -> tuple[Segment, Segment, Tls | None]:
        loads: list[Segment] = []
        flags: list[int] = []
        tls: Tls | None = None
        for i in range(elf.num_segments()):
            ph = elf.get_segment(i).header
            kind = ph["p_type"]
            if kind == "PT_INTERP":
                raise self.fail("has an interpreter (PT_INTERP): not a static PIE")
            if kind not in ("PT_LOAD", "PT_TLS"):
                continue
            vaddr, memsz, filesz = ph["p_vaddr"], ph["p_memsz"], ph["p_filesz"]
            if filesz > memsz or vaddr + memsz > MAX_IMAGE_SIZE:
                raise self.fail(f"segment {i} ({kind} at {vaddr:#x}, memsz {memsz:#x}) is "
                                f"larger than a sandbox window allows")
            body = self.file_range(f"segment {i}", ph["p_offset"], filesz)
            if kind == "PT_TLS":
                if tls is not None:
                    raise self.fail("more than one PT_TLS segment")
                tls = Tls(vaddr, body, memsz, ph["p_align"])
                continue
            if ph["p_flags"] & P_FLAGS.PF_W and ph["p_flags"] & P_FLAGS.PF_X:
                raise self.fail(f"segment {i} at {vaddr:#x} is writable and executable")
            loads.append(Segment(vaddr, body, memsz))
            flags.append(ph["p_flags"] & (P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X))
        rx, rw = P_FLAGS.PF_R | P_FLAGS.PF_X, P_FLAGS.PF_R | P_FLAGS.PF_W
        if len(loads) != 2 or flags != [rx, rw]:
            raise self.fail(f"needs exactly two PT_LOAD segments, R+X then R+W; found "
                            f"{len(loads)} with flags {flags}")
        code, data = loads
        if code.offset != 0:
            raise self.fail(f"code segment starts at {code.offset:#x}, not at image offset 0")
        if len(code.data) != code.memsz:
            raise self.fail("code segment has a zero-filled tail (memsz > filesz)")
        # The last code page is executable to its end: make its tail int3 (and verified)
        # rather than zeros, which decode as `add %al,(%rax)`.
        tail = -code.memsz % abi.PAGE_SIZE
        code = Segment(0, code.data + b"\xcc" * tail, code.memsz + tail)
        if data.offset < code.end or data.offset % abi.PAGE_SIZE:
            raise self.fail(f"data segment at {data.offset:#x} overlaps the code (ends "
                            f"{code.end:#x}) or is not page aligned")
        if tls is not None and not (data.offset <= tls.offset and
                                    tls.offset + tls.memsz <= data.end):
            raise self.fail(f"TLS template at {tls.offset:#x} lies outside the data segment")
        return code, data, tls

    def read_sections(self, elf: ELFFile) -> dict[str, Any]:
        sections = {}
        for section in elf.iter_sections():
            h = section.header
            if h["sh_type"] != "SHT_NOBITS":
                self.file_range(f"section {section.name!r}", h["sh_offset"], h["sh_size"])
            if h["sh_type"] == "SHT_REL":
                raise self.fail(f"section {section.name!r}: REL relocations are not allowed")
            sections[section.name] = section
        return sections

    def read_rt(self, sections: dict[str, Any], code: Segment) -> tuple[int, int]:
        rt = sections.get(abi.RT_SECTION)
        if rt is None:
            raise self.fail(f"missing section {abi.RT_SECTION}")
        start, size = rt["sh_addr"], rt["sh_size"]
        if start != 0 or size != abi.RT_PAGE_SIZE or not rt["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
            raise self.fail(f"{abi.RT_SECTION} must be one executable page at image offset 0 "
                            f"(found {size:#x} bytes at {start:#x})")
        if code.end <= abi.RT_PAGE_SIZE:
            raise self.fail("code segment holds nothing but the runtime page")
        return (0, abi.RT_PAGE_SIZE)

    def read_symbols(self, elf: ELFFile) -> dict[str, int]:
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise self.fail("missing symbol table .symtab")
        found = {}
        for name in REQUIRED_SYMBOLS:
            syms = symtab.get_symbol_by_name(name)
            if not syms:
                raise self.fail(f"missing symbol {name}")
            found[name] = syms[0]["st_value"]
        expect = {abi.RT_SYSCALL_SYMBOL: abi.RT_SYSCALL_OFFSET,
                  abi.RT_EXIT_SYMBOL: abi.RT_EXIT_OFFSET}
        for name, offset in expect.items():
            if found[name] != offset:
                raise self.fail(f"symbol {name} at {found[name]:#x}, must be {offset:#x}")
        return found

    def read_info(self, sections: dict[str, Any], code: Segment, data: Segment,
                  symbols: dict[str, int]) -> ImageInfo:
        section = sections.get(abi.INFO_SECTION)
        if section is None:
            raise self.fail(f"missing section {abi.INFO_SECTION}")
        try:
            obj = json.loads(section.data().rstrip(b"\0").decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.fail(f"{abi.INFO_SECTION} is not JSON: {e}") from None
        want = {"format": int, "isolation": str, "exports": dict, "stack_size": int,
                "entry": int, "tp_slot": int}
        if not isinstance(obj, dict):
            raise self.fail(f"{abi.INFO_SECTION} is not a JSON object")
        for key, kind in want.items():
            if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
                raise self.fail(f"{abi.INFO_SECTION}: field {key!r} missing or not {kind.__name__}")
        if obj["format"] != abi.IMAGE_FORMAT:
            raise self.fail(f"{abi.INFO_SECTION}: format {obj['format']} is not "
                            f"{abi.IMAGE_FORMAT}")
        if obj["isolation"] not in abi.ISOLATION_MODES:
            raise self.fail(f"{abi.INFO_SECTION}: unknown isolation mode {obj['isolation']!r}")
        in_code = range(abi.RT_PAGE_SIZE, code.end)
        entries = {"entry": obj["entry"]}
        for name, offset in obj["exports"].items():
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise self.fail(f"{abi.INFO_SECTION}: export {name!r} has no integer offset")
            entries[f"export {name!r}"] = offset
        for what, offset in entries.items():
            if offset not in in_code:
                raise self.fail(f"{abi.INFO_SECTION}: {what} at {offset:#x} is outside the code")
        tp = obj["tp_slot"]
        if tp != symbols[abi.TP_SYMBOL] or not data.offset <= tp <= data.end - 8:
            raise self.fail(f"{abi.INFO_SECTION}: tp_slot {tp:#x} is not {abi.TP_SYMBOL} in "
                            "the data segment")
        if not 0 < obj["stack_size"] < MAX_IMAGE_SIZE:
            raise self.fail(f"{abi.INFO_SECTION}: stack_size {obj['stack_size']} out of range")
        return ImageInfo(isolation=obj["isolation"], exports=dict(obj["exports"]),
                         stack_size=obj["stack_size"], entry=obj["entry"], tp_slot=tp)

    def read_relocations(self, elf: ELFFile, data: Segment) -> tuple[tuple[int, int], ...]:
        relocs = []
        for section in elf.iter_sections():
            if not isinstance(section, RelocationSection) or not section["sh_flags"] & \
                    SH_FLAGS.SHF_ALLOC:
                continue
            for rel in section.iter_relocations():
                offset, kind = rel["r_offset"], rel["r_info_type"]
                if kind != R_X86_64_RELATIVE:
                    raise self.fail(f"relocation type {kind} at {offset:#x} in "
                                    f"{section.name}: only R_X86_64_RELATIVE is allowed")
                # A relocation must never patch the verified code, and it patches file bytes.
                if not data.offset <= offset <= data.offset + len(data.data) - 8:
                    raise self.fail(f"relocation at {offset:#x} lies outside the data "
                                    "segment's initialised bytes")
                relocs.append((offset, rel["r_addend"]))
        return tuple(relocs)
