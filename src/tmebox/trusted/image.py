"""Reader of tmebox sandbox images (docs/design.md "The runtime page and image format").

The verifier and the runtime both see an image only through `Image`, so what is verified is
exactly what gets mapped: the R+X bytes, the R+W bytes, the relocations. Every malformed input
becomes an `ImageError` naming the file and the problem.

The image is the attacker's, so the reader parses the few ELF structures it needs itself, with
`struct` on the file's bytes: every count, size and offset is checked against the file and a
small fixed bound before anything is read, and nothing is ever decompressed or zero-filled
(the metadata sections may be neither SHT_NOBITS nor SHF_COMPRESSED). Memory and time are then
linear in the file, which is itself bounded (MAX_FILE_SIZE).

A file may start with a `#!` launcher line (`tmebox cc` writes one so that `./a.out` runs
through `tmebox exec`); the image is what follows that line, and only that is hashed, checked
and mapped. The line is for the host's kernel, which the sandbox never sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from enum import StrEnum
from pathlib import Path

from tmebox.trusted import abi
from tmebox.trusted.errors import ImageError, TmeboxError
from tmebox.trusted.record import Record, field, replace
from tmebox.trusted.signature import MAX_IMPORTS, Signature

__all__ = ["CpuLevel", "Image", "ImageInfo", "Isolation", "Segment", "Tls"]

assert abi.ISOLATION_MODES == ("data", "code+data")
assert abi.CPU_LEVELS == ("x86-64", "x86-64-v2", "x86-64-v3")


class Isolation(StrEnum):
    """An image's isolation mode, weakest first (the values are abi.ISOLATION_MODES)."""

    DATA = "data"  # memory accesses confined; control flow is not: for trusted code
    CODE_DATA = "code+data"  # control flow confined too: for untrusted code

    @classmethod
    def parse(cls, value: str) -> Isolation:
        try:
            return cls(value)
        except ValueError:
            raise TmeboxError(f"unknown isolation mode {value!r}; choose one of "
                              f"{', '.join(m.value for m in cls)}") from None

    @property
    def strength(self) -> int:
        return list(Isolation).index(self)


class CpuLevel(StrEnum):
    """The x86-64 micro-architecture level an image's code needs, lowest first (the psABI's
    names; which instructions each admits: rules.py, docs/verifier.md "CPU levels")."""

    X86_64 = "x86-64"  # SSE2: what every x86-64 CPU runs, and the tme backend
    V2 = "x86-64-v2"  # + SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B
    V3 = "x86-64-v3"  # + AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, XGETBV

    @classmethod
    def parse(cls, value: str) -> CpuLevel:
        try:
            return cls(value)
        except ValueError:
            raise TmeboxError(f"unknown CPU level {value!r}; choose one of "
                              f"{', '.join(m.value for m in cls)}") from None

    @property
    def rank(self) -> int:
        return list(CpuLevel).index(self)

R_X86_64_RELATIVE = 8
EHDR_SIZE, PHDR_SIZE, SHDR_SIZE, SYM_SIZE, RELA_SIZE = 64, 56, 64, 24, 24
PT_LOAD, PT_INTERP, PT_TLS = 1, 3, 7
PF_X, PF_W, PF_R = 1, 2, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 1, 2, 3, 4, 8, 9
SHF_ALLOC, SHF_EXECINSTR, SHF_COMPRESSED = 0x2, 0x4, 0x800

# Fixed bounds, far above what `tmebox cc` produces (tens of sections, a few program headers,
# a .tmebox_info of a few KiB), so that no field of the file decides how much is allocated.
MAX_FILE_SIZE = 256 << 20
MAX_PHDRS = 64
MAX_SECTIONS = 4096
MAX_INFO_SIZE = 1 << 20
MAX_SECTION_NAMES_SIZE = 1 << 20
MAX_SYMBOLS = 1 << 20
MAX_RELOCATIONS = 1 << 20
# An image must fit in its window between the low guard (where it is placed) and the high guard.
MAX_IMAGE_SIZE = abi.WINDOW_SIZE - abi.IMAGE_WINDOW_OFFSET - abi.GUARD_SIZE
REQUIRED_SYMBOLS = (
    abi.RT_SYSCALL_SYMBOL,
    abi.RT_EXIT_SYMBOL,
    abi.TP_SYMBOL,
    "__tmebox_stack_bottom",
    "__tmebox_stack_top",
)


class Segment(Record, frozen=True):
    """A PT_LOAD segment: `offset` is its image offset (= p_vaddr of the static PIE).

    The code segment's `data` is padded with int3 to a whole page: that is what gets mapped.
    """

    offset: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.offset + self.memsz


class Tls(Record, frozen=True):
    """The PT_TLS template: `offset` is its image offset, `data` its initialised part."""

    offset: int
    data: bytes
    memsz: int
    align: int


class ImageInfo(Record, frozen=True):
    """The `.tmebox_info` JSON object."""

    isolation: Isolation
    exports: dict[str, int]
    stack_size: int
    entry: int
    tp_slot: int
    # Optional (images built without debug information, or by hand, have none):
    signatures: dict[str, Signature] = field(default_factory=dict)  # of exports, by name
    imports: tuple[tuple[str, Signature], ...] = ()  # host functions, by runtime-call index
    data_symbols: dict[str, int] = field(default_factory=dict)  # exported globals
    unsupported: dict[str, str] = field(default_factory=dict)  # export -> why it is untyped
    level: CpuLevel = CpuLevel.X86_64  # "cpu_level"; absent in images of before levels


class Image(Record, frozen=True):
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
    def isolation(self) -> Isolation:
        return self.info.isolation

    @property
    def entry(self) -> int:
        return self.info.entry

    @property
    def level(self) -> CpuLevel:
        return self.info.level

    @property
    def exports(self) -> dict[str, int]:
        return self.info.exports

    @classmethod
    def load(cls, path: Path | str) -> Image:
        path = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer.
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: no size to bound
                    raise ImageError(f"{path}: not a regular file")
                if st.st_size > MAX_FILE_SIZE:
                    raise ImageError(f"{path}: larger than {MAX_FILE_SIZE >> 20} MiB")
                data = f.read(MAX_FILE_SIZE + 1)  # the file may have grown since
        except OSError as e:
            raise ImageError(f"{path}: cannot read image: {e.strerror or e}") from None
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<image>") -> Image:
        return _Reader(_without_launcher(bytes(data), name), name).read()


def _without_launcher(data: bytes, name: str) -> bytes:
    if not data.startswith(b"#!"):
        return data
    end = data.find(b"\n", 0, abi.LAUNCHER_MAX)
    if end < 0:
        raise ImageError(f"{name}: a #! line longer than {abi.LAUNCHER_MAX} bytes, or no "
                         "image after it")
    return data[end + 1:]


class _Header(Record, frozen=True):
    phoff: int
    phnum: int
    shoff: int
    shnum: int
    shstrndx: int


class _Section(Record, frozen=True):
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.raw = data
        self.name = name

    def fail(self, problem: str) -> ImageError:
        return ImageError(f"{self.name}: {problem}")

    def read(self) -> Image:
        if len(self.raw) > MAX_FILE_SIZE:
            raise self.fail(f"larger than {MAX_FILE_SIZE >> 20} MiB")
        header = self.read_header()
        code, data, tls = self.read_segments(header)
        sections = self.read_sections(header)
        rt_range = self.read_rt(sections, code)
        symbols = self.read_symbols(sections)
        info = self.read_info(sections, code, data, symbols)
        relocations = self.read_relocations(sections, data)
        return Image(
            name=self.name,
            sha256=hashlib.sha256(self.raw).hexdigest(),
            size=data.end,
            code=code,
            data=data,
            rt_range=rt_range,
            symbols=symbols,
            info=info,
            relocations=relocations,
            phdrs=self.raw[header.phoff:header.phoff + header.phnum * PHDR_SIZE],
            phnum=header.phnum,
            tls=tls,
        )

    def file_range(self, what: str, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.raw):
            raise self.fail(f"{what} (file offset {offset:#x}, size {size:#x}) lies outside "
                            f"the file ({len(self.raw):#x} bytes)")
        return self.raw[offset:offset + size]

    def read_header(self) -> _Header:
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
        if (phentsize != PHDR_SIZE or not 0 < phnum <= MAX_PHDRS
                or phoff + phnum * PHDR_SIZE > len(raw)):
            raise self.fail(f"program header table missing, outside the file or longer than "
                            f"{MAX_PHDRS} entries")
        # shnum 0 (more than 0xff00 sections, the count in section 0) is refused with it.
        if (shentsize != SHDR_SIZE or not 0 < shnum <= MAX_SECTIONS
                or shoff + shnum * SHDR_SIZE > len(raw) or shstrndx >= shnum):
            raise self.fail(f"section header table missing, outside the file or longer than "
                            f"{MAX_SECTIONS} entries")
        return _Header(phoff, phnum, shoff, shnum, shstrndx)

    def read_segments(self, header: _Header) -> tuple[Segment, Segment, Tls | None]:
        loads: list[Segment] = []
        flags: list[int] = []
        tls: Tls | None = None
        for i in range(header.phnum):
            kind, pflags, offset, vaddr, _paddr, filesz, memsz, align = struct.unpack_from(
                "<IIQQQQQQ", self.raw, header.phoff + i * PHDR_SIZE)
            if kind == PT_INTERP:
                raise self.fail("has an interpreter (PT_INTERP): not a static PIE")
            if kind not in (PT_LOAD, PT_TLS):
                continue
            what = "PT_LOAD" if kind == PT_LOAD else "PT_TLS"
            if filesz > memsz or vaddr + memsz > MAX_IMAGE_SIZE:
                raise self.fail(f"segment {i} ({what} at {vaddr:#x}, memsz {memsz:#x}) is "
                                f"larger than a sandbox window allows")
            body = self.file_range(f"segment {i}", offset, filesz)
            if kind == PT_TLS:
                if tls is not None:
                    raise self.fail("more than one PT_TLS segment")
                tls = Tls(vaddr, body, memsz, align)
                continue
            if pflags & PF_W and pflags & PF_X:
                raise self.fail(f"segment {i} at {vaddr:#x} is writable and executable")
            loads.append(Segment(vaddr, body, memsz))
            flags.append(pflags & (PF_R | PF_W | PF_X))
        if len(loads) != 2 or flags != [PF_R | PF_X, PF_R | PF_W]:
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

    def read_sections(self, header: _Header) -> dict[str, _Section]:
        rows = [struct.unpack_from("<IIQQQQIIQQ", self.raw, header.shoff + i * SHDR_SIZE)
                for i in range(header.shnum)]
        sections = []
        for i, (_name, kind, flags, addr, offset, size, link, _info, _align, entsize) in \
                enumerate(rows):
            if kind != SHT_NOBITS:
                self.file_range(f"section {i}", offset, size)
            sections.append(_Section(i, "", kind, flags, addr, offset, size, link, entsize))
        names = self.contents(sections[header.shstrndx], "the section name table", SHT_STRTAB,
                              MAX_SECTION_NAMES_SIZE)
        by_name: dict[str, _Section] = {}
        for section, row in zip(sections, rows, strict=True):
            name = self.string(names, row[0], f"name of section {section.index}")
            section = replace(section, name=name)
            if section.type == SHT_REL:
                raise self.fail(f"section {name!r}: REL relocations are not allowed")
            # Only by their type are relocations found: a retyped one would go unapplied.
            if name.startswith(".rel") and section.type != SHT_RELA:
                raise self.fail(f"section {name!r} has type {section.type}, not RELA")
            if name and name in by_name:
                raise self.fail(f"two sections are named {name!r}")
            by_name[name] = section
        by_name.pop("", None)
        return by_name

    def contents(self, section: _Section, what: str, kind: int, limit: int) -> bytes:
        """The bytes of a section the reader interprets: stored, uncompressed, bounded."""
        if section.type != kind:
            raise self.fail(f"{what} (section {section.index}) has type {section.type}, not "
                            f"{kind}")
        if section.flags & SHF_COMPRESSED:
            raise self.fail(f"{what} (section {section.index}) is compressed")
        if section.size > limit:
            raise self.fail(f"{what} (section {section.index}) is {section.size:#x} bytes, "
                            f"more than {limit:#x}")
        return self.file_range(what, section.offset, section.size)

    def string(self, table: bytes, offset: int, what: str) -> str:
        end = table.find(b"\0", offset)
        if offset >= len(table) or end < 0:
            raise self.fail(f"{what} at {offset:#x} is not a string of its table")
        try:
            return table[offset:end].decode()
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def read_rt(self, sections: dict[str, _Section], code: Segment) -> tuple[int, int]:
        rt = sections.get(abi.RT_SECTION)
        if rt is None:
            raise self.fail(f"missing section {abi.RT_SECTION}")
        if (rt.type == SHT_NOBITS or rt.flags & SHF_COMPRESSED or rt.addr != 0
                or rt.size != abi.RT_PAGE_SIZE or not rt.flags & SHF_EXECINSTR):
            raise self.fail(f"{abi.RT_SECTION} must be one stored executable page at image "
                            f"offset 0 (found {rt.size:#x} bytes at {rt.addr:#x})")
        if code.end <= abi.RT_PAGE_SIZE:
            raise self.fail("code segment holds nothing but the runtime page")
        return (0, abi.RT_PAGE_SIZE)

    def read_symbols(self, sections: dict[str, _Section]) -> dict[str, int]:
        symtab = sections.get(".symtab")
        if symtab is None:
            raise self.fail("missing symbol table .symtab")
        if symtab.entsize != SYM_SIZE or symtab.size % SYM_SIZE:
            raise self.fail(f".symtab entries are not {SYM_SIZE} bytes")
        table = self.contents(symtab, ".symtab", SHT_SYMTAB, MAX_SYMBOLS * SYM_SIZE)
        by_index = {s.index: s for s in sections.values()}
        if symtab.link not in by_index:
            raise self.fail(f".symtab links to section {symtab.link}, which does not exist")
        strings = self.contents(by_index[symtab.link], ".symtab's string table", SHT_STRTAB,
                                len(self.raw))
        # The string offsets naming each required symbol (a name may end a longer string).
        wanted: dict[int, str] = {}
        for name in REQUIRED_SYMBOLS:
            key = name.encode() + b"\0"
            at = strings.find(key)
            while at >= 0:
                wanted[at] = name
                at = strings.find(key, at + 1)
        found: dict[str, int] = {}
        for st_name, _info, _other, _shndx, value, _size in struct.iter_unpack("<IBBHQQ", table):
            symbol = wanted.get(st_name)
            if symbol is not None and symbol not in found:
                found[symbol] = value
        for name in REQUIRED_SYMBOLS:
            if name not in found:
                raise self.fail(f"missing symbol {name}")
        expect = {abi.RT_SYSCALL_SYMBOL: abi.RT_SYSCALL_OFFSET,
                  abi.RT_EXIT_SYMBOL: abi.RT_EXIT_OFFSET}
        for name, offset in expect.items():
            if found[name] != offset:
                raise self.fail(f"symbol {name} at {found[name]:#x}, must be {offset:#x}")
        return {name: found[name] for name in REQUIRED_SYMBOLS}

    def read_info(self, sections: dict[str, _Section], code: Segment, data: Segment,
                  symbols: dict[str, int]) -> ImageInfo:
        section = sections.get(abi.INFO_SECTION)
        if section is None:
            raise self.fail(f"missing section {abi.INFO_SECTION}")
        # Written by objcopy --add-section as PROGBITS (NOBITS would be a zero-fill).
        text = self.contents(section, abi.INFO_SECTION, SHT_PROGBITS, MAX_INFO_SIZE)
        try:
            obj = json.loads(text.rstrip(b"\0").decode())
        # ValueError: also integers of more digits than Python converts.
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
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
        level = obj.get("cpu_level", CpuLevel.X86_64.value)
        if not isinstance(level, str) or level not in {m.value for m in CpuLevel}:
            raise self.fail(f"{abi.INFO_SECTION}: unknown cpu_level {level!r}")
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
        return ImageInfo(isolation=Isolation(obj["isolation"]), exports=dict(obj["exports"]),
                         stack_size=obj["stack_size"], entry=obj["entry"], tp_slot=tp,
                         level=CpuLevel(level), **self.read_interface(obj, data))

    def read_interface(self, obj: dict, data: Segment) -> dict:
        """The optional signatures, imports and exported data of `.tmebox_info`."""
        where = abi.INFO_SECTION
        sigs, imports, syms, unsupported = (
            obj.get(k, d) for k, d in (("signatures", {}), ("imports", []),
                                       ("data_symbols", {}), ("unsupported", {})))
        if not (isinstance(sigs, dict) and isinstance(imports, list)
                and isinstance(syms, dict) and isinstance(unsupported, dict)
                and all(isinstance(v, str) for v in unsupported.values())):
            raise self.fail(f"{where}: signatures, imports, data_symbols or unsupported of "
                            "the wrong type")
        if len(imports) > MAX_IMPORTS:
            raise self.fail(f"{where}: {len(imports)} imports, more than {MAX_IMPORTS}")
        signatures = {}
        for name, sig in sigs.items():
            if name not in obj["exports"]:
                raise self.fail(f"{where}: signature of {name!r}, which is not exported")
            signatures[name] = Signature.parse(sig, f"{self.name}: {where}: export {name!r}")
        table = []
        for item in imports:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise self.fail(f"{where}: an import is not [name, signature]")
            table.append((item[0], Signature.parse(item[1],
                                                   f"{self.name}: {where}: import {item[0]!r}")))
        if len({n for n, _ in table}) != len(table):
            raise self.fail(f"{where}: an import is listed twice")
        for name, off in syms.items():
            if (not isinstance(off, int) or isinstance(off, bool)
                    or not data.offset <= off < data.end):
                raise self.fail(f"{where}: data symbol {name!r} is not in the data segment")
        return {"signatures": signatures, "imports": tuple(table), "data_symbols": dict(syms),
                "unsupported": {k: v[:200] for k, v in unsupported.items()}}

    def read_relocations(self, sections: dict[str, _Section],
                         data: Segment) -> tuple[tuple[int, int], ...]:
        relocs: list[tuple[int, int]] = []
        for section in sorted(sections.values(), key=lambda s: s.index):
            if section.type != SHT_RELA or not section.flags & SHF_ALLOC:
                continue
            if section.entsize != RELA_SIZE or section.size % RELA_SIZE:
                raise self.fail(f"section {section.name!r}: entries are not {RELA_SIZE} bytes")
            table = self.contents(section, f"section {section.name!r}", SHT_RELA,
                                  (MAX_RELOCATIONS - len(relocs)) * RELA_SIZE)
            for offset, r_info, addend in struct.iter_unpack("<QQq", table):
                kind = r_info & 0xFFFF_FFFF
                if kind != R_X86_64_RELATIVE:
                    raise self.fail(f"relocation type {kind} at {offset:#x} in "
                                    f"{section.name}: only R_X86_64_RELATIVE is allowed")
                # A relocation must never patch the verified code, and it patches file bytes.
                if not data.offset <= offset <= data.offset + len(data.data) - 8:
                    raise self.fail(f"relocation at {offset:#x} lies outside the data "
                                    "segment's initialised bytes")
                relocs.append((offset, addend))
        return tuple(relocs)
