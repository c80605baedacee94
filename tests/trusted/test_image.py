"""The image reader: what it extracts, and that bad input only ever raises ImageError."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "verifier_corpus"))
import asmkit  # noqa: E402

from tmebox.errors import ImageError  # noqa: E402
from tmebox.trusted import abi  # noqa: E402
from tmebox.trusted.image import Image  # noqa: E402

PROGRAM = """
    .text
    .globl _start, helper
    .p2align 5
_start:
    mov rax, qword ptr [rip + self_pointer]
    jmp _start
    .p2align 5
helper:
    nop
"""


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("image")
    return asmkit.link_image(PROGRAM, workdir)


@pytest.fixture(scope="module")
def image_bytes(image_path: Path) -> bytes:
    return image_path.read_bytes()


def test_load_extracts_the_layout(image_path: Path) -> None:
    image = Image.load(image_path)
    symbols = asmkit.read_symbols(image_path)
    assert image.name == str(image_path)
    assert image.code.offset == 0 and image.rt_range == (0, abi.RT_PAGE_SIZE)
    assert image.code.memsz % abi.PAGE_SIZE == 0 and len(image.code.data) == image.code.memsz
    assert image.code.data[:abi.RT_PAGE_SIZE] == b"\xcc" * abi.RT_PAGE_SIZE
    assert image.code.data.endswith(b"\xcc")  # page tail padded with int3
    assert image.data.offset == symbols["__tmebox_stack_top"]
    assert image.size == image.data.end
    assert image.symbols[abi.TP_SYMBOL] == symbols[abi.TP_SYMBOL] == image.info.tp_slot
    assert image.symbols["__tmebox_stack_top"] - image.symbols["__tmebox_stack_bottom"] == \
        abi.DEFAULT_STACK_SIZE
    assert image.isolation == "code+data"
    assert image.entry == symbols["_start"] == abi.RT_PAGE_SIZE
    assert image.exports == {"_start": symbols["_start"]}


def test_relocations_tls_and_phdrs(image_path: Path, image_bytes: bytes) -> None:
    image = Image.load(image_path)
    self_pointer = asmkit.read_symbols(image_path)["self_pointer"]
    assert image.relocations == ((self_pointer, self_pointer),)
    assert image.tls is not None and image.tls.data == (42).to_bytes(8, "little")
    phoff, = struct.unpack_from("<Q", image_bytes, 32)
    assert image.phnum == 4
    assert image.phdrs == image_bytes[phoff:phoff + 4 * 56]
    import hashlib
    assert image.sha256 == hashlib.sha256(image_bytes).hexdigest()


def test_from_bytes_equals_load(image_path: Path, image_bytes: bytes) -> None:
    assert Image.from_bytes(image_bytes, str(image_path)) == Image.load(image_path)


def test_a_launcher_line_is_skipped_and_no_part_of_the_image(image_bytes: bytes) -> None:
    bare = Image.from_bytes(image_bytes, "x")
    line = b"#!/usr/bin/tmebox exec\n"
    with_line = Image.from_bytes(line + image_bytes, "x")
    assert with_line == bare and with_line.sha256 == bare.sha256
    _expect(b"#!" + b"x" * abi.LAUNCHER_MAX + b"\n" + image_bytes, "#! line longer")
    _expect(b"#!/bin/sh", "#! line longer")
    _expect(line + line + image_bytes, "")  # only one line is skipped: ELF must follow
    # what follows the line is what is hashed (and so what a stored verdict is for)
    flipped = bytearray(image_bytes)
    flipped[-1] ^= 1
    assert Image.from_bytes(line + bytes(flipped), "x").sha256 != bare.sha256


def _expect(data: bytes, fragment: str) -> None:
    with pytest.raises(ImageError) as err:
        Image.from_bytes(data, "bad.box")
    assert str(err.value).startswith("bad.box: ")
    assert fragment in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.box: cannot read"):
        Image.load(tmp_path / "nope.box")


def test_header_checks(image_bytes: bytes) -> None:
    _expect(b"", "not an ELF file")
    _expect(b"#!/bin/sh\n" * 10, "not an ELF file")
    _expect(image_bytes[:4] + b"\x01" + image_bytes[5:], "not a little-endian ELF64")
    _expect(image_bytes[:18] + struct.pack("<H", 3) + image_bytes[20:], "is not x86-64")
    _expect(image_bytes[:16] + struct.pack("<H", 2) + image_bytes[18:], "not a static PIE")
    _expect(image_bytes[:4096], "section header table")


def _with_section(image_path: Path, tmp_path: Path, name: str, content: bytes) -> bytes:
    blob = tmp_path / "blob"
    blob.write_bytes(content)
    out = tmp_path / "out.box"
    subprocess.run(["objcopy", "--update-section", f"{name}={blob}", str(image_path), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


@pytest.mark.parametrize(("info", "fragment"), [
    (b"not json", "is not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"format": 1}', "field 'isolation' missing"),
])
def test_malformed_info(image_path: Path, tmp_path: Path, info: bytes, fragment: str) -> None:
    _expect(_with_section(image_path, tmp_path, abi.INFO_SECTION, info), fragment)


@pytest.mark.parametrize(("change", "fragment"), [
    ({"format": 2}, "format 2"),
    ({"isolation": "none"}, "unknown isolation mode"),
    ({"entry": 0x10}, "entry at 0x10 is outside the code"),
    ({"exports": {"f": 1 << 40}}, "export 'f'"),
    ({"exports": {"f": "x"}}, "no integer offset"),
    ({"tp_slot": 0}, "tp_slot"),
    ({"stack_size": 0}, "stack_size"),
    ({"stack_size": True}, "stack_size"),
])
def test_bad_info_fields(tmp_path: Path, change: dict, fragment: str) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path, info=change)
    _expect(path.read_bytes(), fragment)


# The embedding interface (signatures, host-function imports, exported data) is the image's
# own word too: its form is checked before anything uses it.
@pytest.mark.parametrize(("change", "fragment"), [
    ({"signatures": {"nope": ["i32", []]}}, "signature of 'nope', which is not exported"),
    ({"signatures": {"_start": ["i99", []]}}, "bad signature"),
    ({"signatures": {"_start": ["i32", ["void"]]}}, "bad signature"),
    ({"signatures": {"_start": ["i32", ["i64"] * 7]}}, "bad signature"),
    ({"signatures": {"_start": ["i32", ["f64"] * 15]}}, "too many parameters"),
    ({"signatures": {"_start": "i32"}}, "bad signature"),
    ({"imports": [["h", ["i32", []]]] * 2}, "an import is listed twice"),
    ({"imports": [[f"h{i}", ["i32", []]] for i in range(1025)]}, "more than 1024"),
    ({"imports": [[1, ["i32", []]]]}, "an import is not [name, signature]"),
    ({"imports": {"h": 1}}, "of the wrong type"),
    ({"data_symbols": {"x": 0}}, "data symbol 'x' is not in the data segment"),
    ({"data_symbols": {"x": True}}, "data symbol 'x'"),
    ({"unsupported": {"f": 1}}, "of the wrong type"),
])
def test_bad_interface_fields(tmp_path: Path, change: dict, fragment: str) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path, info=change)
    _expect(path.read_bytes(), fragment)


def test_info_json_round_trips(image_path: Path, tmp_path: Path) -> None:
    image = Image.load(image_path)
    info = {"format": 1, "isolation": "data", "exports": image.exports, "stack_size": 4096,
            "entry": image.entry, "tp_slot": image.info.tp_slot}
    data = _with_section(image_path, tmp_path, abi.INFO_SECTION, json.dumps(info).encode())
    assert Image.from_bytes(data).info.isolation == "data"


def test_missing_runtime_page(tmp_path: Path) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path)
    data = path.read_bytes().replace(abi.RT_SECTION.encode(), b".tmebox_xx")
    _expect(data, f"missing section {abi.RT_SECTION}")


def test_missing_symbol(tmp_path: Path) -> None:
    data = asmkit.link_image(PROGRAM, tmp_path).read_bytes()
    _expect(data.replace(b"__tmebox_stack_top", b"__tmebox_stack_tip"),
            "missing symbol __tmebox_stack_top")


def _patch_phdr(data: bytes, index: int, **fields: int) -> bytes:
    names = ["p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
             "p_align"]
    phoff, = struct.unpack_from("<Q", data, 32)
    at = phoff + 56 * index
    values = dict(zip(names, struct.unpack_from("<IIQQQQQQ", data, at), strict=True))
    values.update(fields)
    out = bytearray(data)
    struct.pack_into("<IIQQQQQQ", out, at, *values.values())
    return bytes(out)


def test_segment_checks(image_bytes: bytes) -> None:
    _expect(_patch_phdr(image_bytes, 0, p_flags=7), "writable and executable")
    _expect(_patch_phdr(image_bytes, 1, p_flags=7), "writable and executable")
    _expect(_patch_phdr(image_bytes, 1, p_type=4), "exactly two PT_LOAD")  # data -> PT_NOTE
    _expect(_patch_phdr(image_bytes, 2, p_type=1, p_flags=4), "exactly two PT_LOAD")
    _expect(_patch_phdr(image_bytes, 0, p_memsz=0x1_0000_0000), "larger than a sandbox window")
    _expect(_patch_phdr(image_bytes, 0, p_filesz=1 << 62, p_memsz=1 << 62), "larger than")
    _expect(_patch_phdr(image_bytes, 0, p_offset=1 << 40), "outside the file")
    _expect(_patch_phdr(image_bytes, 0, p_vaddr=0x1000), "not at image offset 0")
    _expect(_patch_phdr(image_bytes, 0, p_memsz=0x3000), "zero-filled tail")
    _expect(_patch_phdr(image_bytes, 1, p_vaddr=0x1000, p_paddr=0x1000), "overlaps the code")
    _expect(_patch_phdr(image_bytes, 3, p_vaddr=0), "TLS template")
    _expect(_patch_phdr(image_bytes, 2, p_type=3), "PT_INTERP")


def test_relocation_checks(tmp_path: Path) -> None:
    # A relocation that would patch verified code, and a non-RELATIVE one.
    code_reloc = asmkit.link_image(PROGRAM + "\n.data\n.quad _start\n", tmp_path / "a")
    image = Image.load(code_reloc)
    assert len(image.relocations) == 2
    data = code_reloc.read_bytes()
    rela = data.find(struct.pack("<QQ", image.relocations[0][0], 8))
    assert rela > 0
    patched = bytearray(data)
    struct.pack_into("<Q", patched, rela, 0x1000)
    _expect(bytes(patched), "outside the data segment")
    struct.pack_into("<Q", patched, rela, image.data.offset + len(image.data.data) - 4)
    _expect(bytes(patched), "initialised bytes")
    struct.pack_into("<QQ", patched, rela, image.relocations[0][0], 1)  # R_X86_64_64
    _expect(bytes(patched), "only R_X86_64_RELATIVE")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corruption_only_raises_image_error(image_bytes: bytes, data: st.DataObject) -> None:
    """Truncations and byte flips: a valid image or ImageError, never another exception."""
    blob = bytearray(image_bytes)
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    for _ in range(data.draw(st.integers(1, 8))):
        if not blob:
            break
        # Bias towards the headers, where pyelftools is most easily confused.
        limit = data.draw(st.sampled_from([64 + 4 * 56, len(blob)]))
        i = data.draw(st.integers(0, min(limit, len(blob)) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        Image.from_bytes(bytes(blob), "fuzz.box")
    except ImageError as e:
        assert str(e).startswith("fuzz.box: ")
