"""code+data call padding: each call group is padded so that its call ends a bundle,
with no more nops than that; the fixed 32-byte groups are the fallback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import capstone
import pytest
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from tmebox.toolchain import nopmerge, unit
from tmebox.toolchain.rewriter import rewrite_assembly
from tmebox.trusted import abi

PROGRAMS = Path(__file__).parent / "programs"

# Many direct and indirect calls at every offset a bundle can have.
MANY_CALLS = r"""
int ext(int);
int (*fp)(int, int);
struct ops { int (*f)(int); int (*g)(int, int); } *tab;
int work(int n) {
    int s = 0;
    for (int i = 0; i < n; i++) {
        s += ext(i);
        if (s & 1) s += fp(s, i);
        if (s & 2) s ^= tab[i & 3].f(s);
        s += tab[s & 3].g(i, s) + ext(s >> 3);
        if (s > 1000) s = ext(s) - fp(i, s);
    }
    return s + ext(n) * ext(n + 1);
}
"""


def gcc_asm(tmp_path: Path, source: str | Path) -> str:
    if isinstance(source, str):
        src = tmp_path / "t.c"
        src.write_text(source)
    else:
        src = source
    res = subprocess.run(["gcc", *unit.sandbox_cflags("code+data"), "-O2", "-nostdinc",
                          "-isystem", str(tmp_path), "-w", "-S", "-o", "-", str(src)],
                         capture_output=True, text=True, check=True)
    return res.stdout


def fixed_object(asm: str, obj: Path) -> Path:
    """The object of the fixed scheme: every call group one whole bundle."""
    unit.assemble_text(unit.rewrite(asm, isolation="code+data", source="t.s"), obj, "t.s")
    nopmerge.merge_object(obj)
    return obj


def code_of(obj: Path) -> list[tuple[int, int, str]]:
    """(offset, size, mnemonic) of each instruction of each executable section."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    with obj.open("rb") as f:
        for sec in ELFFile(f).iter_sections():
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_type"] == "SHT_PROGBITS":
                data = sec.data()
                insns = [(a, s, m) for a, s, m, _ in md.disasm_lite(data, 0)]
                assert sum(s for _, s, _ in insns) == len(data)
                out += insns
    return out


def nop_bytes(obj: Path) -> int:
    return sum(s for _, s, m in code_of(obj) if m.startswith("nop"))


def calls(obj: Path) -> list[tuple[int, int, str]]:
    return [i for i in code_of(obj) if i[2] == "call"]


def pads_before_calls(insns: list[tuple[int, int, str]]) -> list[int]:
    """Nop bytes before each call sequence (a direct call, or `andl; orq; call *%r11`)."""
    pads = []
    for i, (_, size, mnemonic) in enumerate(insns):
        if mnemonic != "call":
            continue
        j = i - 3 if size == 3 else i - 1
        pad = 0
        while j >= 0 and insns[j][2].startswith("nop"):
            pad += insns[j][1]
            j -= 1
        pads.append(pad)
    return pads


def test_default_rewrite_keeps_whole_bundle_groups() -> None:
    text = rewrite_assembly("\tcall\tf\n", isolation="code+data")
    assert ".space" not in text and ".Ltmebox" not in text
    aligned = rewrite_assembly("\tcall\tf\n", isolation="code+data", align_calls=True)
    assert ".space" in aligned
    # data mode has no call groups at all
    assert rewrite_assembly("\tcall\tf\n", isolation="data", align_calls=True) == \
        rewrite_assembly("\tcall\tf\n", isolation="data")


def test_gcc_output_calls_end_bundles_with_far_fewer_nops(tmp_path: Path) -> None:
    asm = gcc_asm(tmp_path, MANY_CALLS)
    obj = tmp_path / "new.o"
    assert unit._assemble_aligned_calls(asm, obj, "t.s")
    nopmerge.merge_object(obj)
    cs = calls(obj)
    assert len(cs) >= 8
    assert all((a + s) % abi.BUNDLE_SIZE == 0 for a, s, _ in cs)
    # The padding is not a fixed 27/22 bytes: it is whatever each call needs.
    assert len(set(pads_before_calls(code_of(obj)))) > 3
    assert unit.calls_end_bundles(obj) == len(cs)
    old = fixed_object(asm, tmp_path / "old.o")
    assert len(calls(old)) == len(cs)
    assert nop_bytes(obj) < nop_bytes(old) / 2
    # Apart from padding, the same instructions in the same order.
    strip = [m for _, _, m in code_of(obj) if not m.startswith("nop")]
    assert strip == [m for _, _, m in code_of(old) if not m.startswith("nop")]


def test_assemble_uses_the_aligned_scheme(tmp_path: Path) -> None:
    asm = gcc_asm(tmp_path, MANY_CALLS)
    obj = tmp_path / "t.o"
    unit.assemble(asm, obj, isolation="code+data", source="t.s")
    fixed = fixed_object(asm, tmp_path / "old.o")
    assert nop_bytes(obj) < nop_bytes(fixed)
    assert unit.calls_end_bundles(obj) == len(calls(fixed))
    with obj.open("rb") as f:  # the section labels are not left in the object
        names = [s.name for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()]
    assert not any(n.startswith(".Ltmebox") for n in names)


def test_each_code_section_counts_from_its_own_start(tmp_path: Path) -> None:
    asm = ("\t.text\n\tnop\n\tcall f\n"
           "\t.pushsection .text.other,\"ax\",@progbits\n\tnop\n\tnop\n\tcall g\n"
           "\t.popsection\n\tnop\n\tcall h\n"
           "\t.section .text.third,\"ax\",@progbits\n\tcall *%rax\n"
           "\t.previous\n\tcall f\n")
    obj = tmp_path / "t.o"
    assert unit._assemble_aligned_calls(asm, obj, "t.s")
    assert unit.calls_end_bundles(obj) == 5
    assert nop_bytes(obj) < nop_bytes(fixed_object(asm, tmp_path / "old.o"))


def test_section_reentered_under_another_group(tmp_path: Path) -> None:
    # Same section name, another comdat group: another section whose padding counts
    # from the first one's label. The assembler takes both at their section offsets.
    asm = ("\t.section .text.f,\"axG\",@progbits,f,comdat\n\tnop\n\tcall f\n"
           "\t.section .text.f,\"axG\",@progbits,g,comdat\n\tnop\n\tnop\n\tcall g\n")
    obj = tmp_path / "t.o"
    unit.assemble(asm, obj, isolation="code+data", source="t.s")
    assert unit.calls_end_bundles(obj) == 2


def test_label_clash_falls_back_to_fixed_groups(tmp_path: Path) -> None:
    # Input that defines the rewriter's own label: the aligned text does not assemble.
    asm = "\tcall f\n.Ltmebox_sec0:\n\tcall g\n"
    obj = tmp_path / "t.o"
    assert not unit._assemble_aligned_calls(asm, obj, "t.s")
    unit.assemble(asm, obj, isolation="code+data", source="t.s")
    assert obj.read_bytes() == fixed_object(asm, tmp_path / "old.o").read_bytes()
    assert unit.calls_end_bundles(obj) == 2


def test_wrong_padding_is_caught_and_falls_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Padding that is one byte short assembles fine; only the decoding check sees that
    # the calls end one byte before their bundle ends.
    asm = gcc_asm(tmp_path, MANY_CALLS)
    real = unit.rewrite

    def off_by_one(text: str, **kw: object) -> str:
        return real(text, **kw).replace(" + 5)) & 31", " + 6)) & 31")

    monkeypatch.setattr(unit, "rewrite", off_by_one)
    obj = tmp_path / "t.o"
    assert not unit._assemble_aligned_calls(asm, obj, "t.s")
    assert unit.calls_end_bundles(obj) == -1
    unit.assemble(asm, obj, isolation="code+data", source="t.s")
    monkeypatch.setattr(unit, "rewrite", real)
    assert obj.read_bytes() == fixed_object(asm, tmp_path / "old.o").read_bytes()


def test_failed_check_falls_back_to_fixed_groups(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    asm = gcc_asm(tmp_path, MANY_CALLS)
    monkeypatch.setattr(unit, "calls_end_bundles", lambda obj: -1)
    obj = tmp_path / "t.o"
    unit.assemble(asm, obj, isolation="code+data", source="t.s")
    assert obj.read_bytes() == fixed_object(asm, tmp_path / "old.o").read_bytes()


def test_checker_rejects_a_misplaced_call(tmp_path: Path) -> None:
    src = tmp_path / "m.s"
    src.write_text("\t.text\n\t.bundle_align_mode 5\n\tnop\n\tcall f\n")
    obj = tmp_path / "m.o"
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
    assert unit.calls_end_bundles(obj) == -1
    src.write_text("\t.text\n\tnop\n\t.space 26, 0x90\n\tcall f\n")
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
    assert unit.calls_end_bundles(obj) == -1  # ends a bundle, but the section is not aligned


def test_assembler_error_still_reported(tmp_path: Path) -> None:
    from tmebox.errors import ToolchainError

    with pytest.raises(ToolchainError, match="assembling bad.s"):
        unit.assemble("\tcall f\n\t.bogus_directive 3\n", tmp_path / "t.o",
                    isolation="code+data", source="bad.s")


@pytest.mark.parametrize("name", ["funcptr", "qsort", "printf", "recursion", "setjmp"])
def test_images_verify_run_and_have_no_whole_bundle_call_groups(name: str, build_image,
                                                                runtime) -> None:
    from tmebox.trusted import verifier

    image = build_image(PROGRAMS / f"{name}.c", "code+data")
    assert verifier.verify_file(image).ok
    out_cd = bytearray()
    sb = runtime.spawn(runtime.load(image), argv=[name], stdout=out_cd, timeout=60)
    try:
        assert sb.run() == 0
    finally:
        sb.destroy()
    data_image = build_image(PROGRAMS / f"{name}.c", "data")
    out_d = bytearray()
    sb = runtime.spawn(runtime.load(data_image), argv=[name], stdout=out_d, timeout=60)
    try:
        assert sb.run() == 0
    finally:
        sb.destroy()
    assert out_cd == out_d and len(out_cd) > 10
    # Most call groups are shorter than a bundle now (the fixed scheme pads every
    # direct call with 27 nop bytes, every masked indirect call with 22).
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    with image.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        insns = [(a, s, m) for a, s, m, _ in md.disasm_lite(text.data(), text["sh_addr"])]
    assert all((a + s) % abi.BUNDLE_SIZE == 0 for a, s, m in insns if m == "call")
    pads = pads_before_calls(insns)
    assert sum(p < abi.BUNDLE_SIZE - 10 for p in pads) > len(pads) // 2


@pytest.fixture(scope="module")
def runtime():
    from tmebox.runtime.api import Runtime

    with Runtime(backend="native", min_isolation="data") as rt:  # tests run both modes
        yield rt
