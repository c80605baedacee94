"""Issue 10, finding 6: the image reader allocates only what the file and fixed bounds allow.

Before the fix the reader asked pyelftools for `.tmebox_info`'s data: a 9 KB image whose
`.tmebox_info` was SHT_NOBITS with a 2 GiB size made it zero-fill 2 GiB, and an
SHF_COMPRESSED one was decompressed whatever its size (a 1000:1 zip bomb). Every case below
must end quickly, with little memory, in an ImageError or a correct load.
"""

from __future__ import annotations

import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "verifier_corpus"))
import asmkit  # noqa: E402

from tmebox.errors import ImageError  # noqa: E402
from tmebox.trusted import abi  # noqa: E402
from tmebox.trusted import image as img  # noqa: E402
from tmebox.trusted.image import Image  # noqa: E402

# An image with relocations and a TLS template, so that every part of the reader runs.
PROGRAM = """
    .text
    .globl _start
    .p2align 5
_start:
    mov rax, qword ptr [rip + self_pointer]
    jmp _start
"""
SHDR = struct.Struct("<IIQQQQIIQQ")
SH_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link",
             "sh_info", "sh_addralign", "sh_entsize")
PHDR = struct.Struct("<IIQQQQQQ")
PH_FIELDS = ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
             "p_align")
EHDR_FIELDS = {"e_phoff": (32, "<Q"), "e_shoff": (40, "<Q"), "e_phentsize": (54, "<H"),
               "e_phnum": (56, "<H"), "e_shentsize": (58, "<H"), "e_shnum": (60, "<H"),
               "e_shstrndx": (62, "<H")}
MEMORY_LIMIT = 16 << 20  # bytes tracemalloc may see at the peak of one load (files are ~20 KB)
TIME_LIMIT = 2.0  # seconds per load, on a busy machine


@pytest.fixture(scope="module")
def image_bytes(tmp_path_factory) -> bytes:
    return asmkit.link_image(PROGRAM, tmp_path_factory.mktemp("bounds")).read_bytes()


def _shdrs(data: bytes) -> tuple[int, list[dict[str, int]]]:
    shoff, = struct.unpack_from("<Q", data, 40)
    shnum, = struct.unpack_from("<H", data, 60)
    return shoff, [dict(zip(SH_FIELDS, SHDR.unpack_from(data, shoff + i * SHDR.size),
                            strict=True)) for i in range(shnum)]


def section_index(data: bytes, name: str) -> int:
    shoff, rows = _shdrs(data)
    strndx, = struct.unpack_from("<H", data, 62)
    names = rows[strndx]
    for i, row in enumerate(rows):
        at = names["sh_offset"] + row["sh_name"]
        if data[at:data.index(b"\0", at)] == name.encode():
            return i
    raise KeyError(name)


def patch_shdr(data: bytes, index: int, at: bytes | None = None, **fields: int) -> bytes:
    """Change section header index (of the table where `at`, default data, has it)."""
    shoff, rows = _shdrs(at or data)
    row = dict(zip(SH_FIELDS, SHDR.unpack_from(data, shoff + index * SHDR.size),
                   strict=True)) | fields
    out = bytearray(data)
    SHDR.pack_into(out, shoff + index * SHDR.size, *row.values())
    return bytes(out)


def patch_phdr(data: bytes, index: int, at: bytes | None = None, **fields: int) -> bytes:
    phoff, = struct.unpack_from("<Q", at or data, 32)
    where = phoff + index * PHDR.size
    row = dict(zip(PH_FIELDS, PHDR.unpack_from(data, where), strict=True)) | fields
    out = bytearray(data)
    PHDR.pack_into(out, where, *row.values())
    return bytes(out)


def patch_ehdr(data: bytes, field: str, value: int) -> bytes:
    at, fmt = EHDR_FIELDS[field]
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def bounded_load(data: bytes) -> Image | ImageError:
    """Load data; fail the test if that takes more than the fixed time or memory bound."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        return Image.from_bytes(data, "m.box")
    except ImageError as e:
        assert str(e).startswith("m.box: ")
        return e
    finally:
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT + 2 * len(data), f"peak {peak} bytes"
        assert elapsed < TIME_LIMIT, f"{elapsed:.1f} s"


def expect_refused(data: bytes, fragment: str) -> None:
    outcome = bounded_load(data)
    assert isinstance(outcome, ImageError), "loaded"
    assert fragment in str(outcome), str(outcome)


def test_a_nobits_info_section_of_2_gib_is_refused_without_a_zero_fill(image_bytes):
    info = section_index(image_bytes, abi.INFO_SECTION)
    bomb = patch_shdr(image_bytes, info, sh_type=img.SHT_NOBITS, sh_size=2 << 30)
    assert len(bomb) < 32 << 10
    expect_refused(bomb, "has type 8")


def test_a_compressed_info_section_is_never_decompressed(image_bytes):
    # 256 MiB of zeros in ~250 KiB: an Elf64_Chdr (ELFCOMPRESS_ZLIB) and the zlib stream.
    z = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    stream = b"".join(z.compress(chunk) for _ in range(256)) + z.flush()
    blob = struct.pack("<IIQQ", 1, 0, 256 << 20, 1) + stream
    info = section_index(image_bytes, abi.INFO_SECTION)
    bomb = patch_shdr(image_bytes + blob, info, sh_flags=img.SHF_COMPRESSED,
                      sh_offset=len(image_bytes), sh_size=len(blob))
    assert len(bomb) < 1 << 20
    expect_refused(bomb, "is compressed")


@pytest.mark.parametrize("section", [".symtab", ".strtab", ".shstrtab", ".rela.dyn",
                                     abi.RT_SECTION, abi.INFO_SECTION])
def test_no_metadata_section_may_be_compressed_or_nobits(image_bytes, section):
    i = section_index(image_bytes, section)
    _, rows = _shdrs(image_bytes)
    flags = rows[i]["sh_flags"]
    for change in ({"sh_flags": flags | img.SHF_COMPRESSED}, {"sh_type": img.SHT_NOBITS}):
        outcome = bounded_load(patch_shdr(image_bytes, i, **change))
        assert isinstance(outcome, ImageError), (section, change)


@pytest.mark.parametrize(("patch", "fragment"), [
    (lambda d: patch_shdr(d + bytes(img.MAX_INFO_SIZE + 1), section_index(d, abi.INFO_SECTION),
                          sh_offset=len(d), sh_size=img.MAX_INFO_SIZE + 1), "more than"),
    (lambda d: patch_shdr(d, section_index(d, ".symtab"), sh_entsize=1), "not 24 bytes"),
    (lambda d: patch_shdr(d, section_index(d, ".symtab"), sh_size=len(d)), "outside the file"),
    (lambda d: patch_shdr(d, section_index(d, ".symtab"), sh_link=999), "does not exist"),
    (lambda d: patch_shdr(d, section_index(d, ".rela.dyn"), sh_entsize=8), "not 24 bytes"),
    (lambda d: patch_shdr(d, section_index(d, ".rela.dyn"), sh_size=1 << 40), "outside"),
    (lambda d: patch_ehdr(d, "e_phnum", img.MAX_PHDRS + 1), "program header table"),
    (lambda d: patch_ehdr(d, "e_shnum", 0), "section header table"),
    (lambda d: patch_ehdr(d, "e_shstrndx", 0xFFFF), "section header table"),
    (lambda d: patch_shdr(d, section_index(d, ".shstrtab"), sh_name=1 << 30), "not a string"),
])
def test_sizes_counts_and_links_are_checked_first(image_bytes, patch: Callable, fragment):
    expect_refused(patch(image_bytes), fragment)


def test_load_refuses_files_it_cannot_bound(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        Image.load("/dev/zero")
    big = tmp_path / "big.box"
    with big.open("wb") as f:
        f.truncate(img.MAX_FILE_SIZE + 1)  # sparse: nothing is written
    with pytest.raises(ImageError, match="larger than 256 MiB"):
        Image.load(big)


def _is_correct(image: Image, data: bytes) -> None:
    """What a successful load promises, checked against the (mutated) file."""
    assert image.sha256 and image == Image.from_bytes(data, "m.box")
    assert image.code.offset == 0 and image.code.memsz % abi.PAGE_SIZE == 0
    assert image.code.data[:abi.RT_PAGE_SIZE] in data  # file bytes, not a fill
    assert image.data.end <= img.MAX_IMAGE_SIZE and bytes(image.data.data) in data
    for off, _ in image.relocations:
        assert image.data.offset <= off <= image.data.offset + len(image.data.data) - 8
    assert image.isolation in abi.ISOLATION_MODES
    assert all(abi.RT_PAGE_SIZE <= v < image.code.end for v in image.exports.values())


def _values(bits: int) -> st.SearchStrategy[int]:
    top = (1 << bits) - 1
    special = [0, 1, 3, 7, 8, 24, 56, 64, 0x800, 0x1000, 0x3000, 0x3001, img.MAX_INFO_SIZE + 1,
               1 << 31, 1 << 32, 1 << 62, top]
    return st.one_of(st.sampled_from([v & top for v in special]), st.integers(0, top))


SH_MUTABLE = {"sh_type": 32, "sh_flags": 64, "sh_offset": 64, "sh_size": 64, "sh_entsize": 64,
              "sh_link": 32, "sh_name": 32}
PH_MUTABLE = {"p_type": 32, "p_flags": 32, "p_offset": 64, "p_vaddr": 64, "p_filesz": 64,
              "p_memsz": 64}
EH_BITS = {"<Q": 64, "<H": 16}
# One mutation: ("ehdr", field, value), ("shdr", index, field, value) with field "compress"
# setting SHF_COMPRESSED, ("phdr", index, field, value), or ("info", bytes).
MUTATION = st.one_of(
    st.sampled_from(sorted(EHDR_FIELDS)).flatmap(
        lambda f: st.tuples(st.just("ehdr"), st.just(f), _values(EH_BITS[EHDR_FIELDS[f][1]]))),
    st.tuples(st.just("shdr"), st.integers(0, 63), st.just("compress"), st.just(0)),
    *(st.tuples(st.just("shdr"), st.integers(0, 63), st.just(f), _values(bits))
      for f, bits in SH_MUTABLE.items()),
    *(st.tuples(st.just("phdr"), st.integers(0, 7), st.just(f), _values(bits))
      for f, bits in PH_MUTABLE.items()),
    # random bytes, or JSON that nests deeply or holds a huge integer
    st.tuples(st.just("info"), st.one_of(st.binary(max_size=512),
                                          st.sampled_from([b"[", b'{"a":', b"9"]))),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply mutations at the original headers' places (an e_shoff change moves nothing)."""
    _, rows = _shdrs(data)
    phnum, = struct.unpack_from("<H", data, 56)
    info = rows[section_index(data, abi.INFO_SECTION)]
    blob = data
    for m in mutations:
        if m[0] == "ehdr":
            blob = patch_ehdr(blob, m[1], m[2])
        elif m[0] == "shdr":
            i = m[1] % len(rows)
            if m[2] == "compress":
                blob = patch_shdr(blob, i, sh_flags=rows[i]["sh_flags"] | img.SHF_COMPRESSED,
                                  at=data)
            else:
                blob = patch_shdr(blob, i, at=data, **{m[2]: m[3]})
        elif m[0] == "phdr":
            blob = patch_phdr(blob, m[1] % phnum, at=data, **{m[2]: m[3]})
        else:
            at, n = info["sh_offset"], info["sh_size"]
            junk = (m[1] * n)[:n] if len(m[1]) < 8 else m[1].ljust(n, b" ")[:n]
            blob = blob[:at] + junk + blob[at + n:]
    return blob


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_any_mutated_image_loads_correctly_or_fails_in_bounded_time_and_memory(
        image_bytes: bytes, mutations: list[tuple]) -> None:
    blob = mutate(image_bytes, mutations)
    outcome = bounded_load(blob)
    if isinstance(outcome, Image):
        _is_correct(outcome, blob)


def test_the_unmutated_image_loads(image_bytes):
    image = bounded_load(image_bytes)
    assert isinstance(image, Image)
    _is_correct(image, image_bytes)
