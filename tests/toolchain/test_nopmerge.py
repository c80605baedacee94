"""The nop merge: one-byte bundle padding becomes multi-byte nops, and nothing else changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from tmebox.toolchain import nopmerge, unit
from tmebox.toolchain.nopmerge import MAX_NOP, NOPS, merge_bytes, merge_object, nop_fill
from tmebox.trusted import abi, verifier

PROGRAMS = Path(__file__).parent / "programs"


def assemble(tmp_path: Path, body: str, name: str = "t") -> Path:
    src = tmp_path / f"{name}.s"
    src.write_text(f"\t.text\n\t.bundle_align_mode 5\n{body}\n")
    obj = tmp_path / f"{name}.o"
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True, capture_output=True)
    return obj


def text_of(obj: bytes) -> bytes:
    import io

    return ELFFile(io.BytesIO(obj)).get_section_by_name(".text").data()


def insns(code: bytes) -> list[tuple[int, int, str]]:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = [(a, s, m) for a, s, m, _ in cs.disasm_lite(code, 0)]
    assert sum(s for _, s, _ in out) == len(code)
    return out


def one_byte_nops(code: bytes) -> int:
    return sum(1 for _, s, m in insns(code) if s == 1 and m == "nop")


def starts(code: bytes) -> set[int]:
    return {a for a, _, _ in insns(code)}


def merged(obj: Path) -> tuple[bytes, bytes]:
    """(.text before, .text after) merging obj."""
    before = obj.read_bytes()
    after, stats = merge_bytes(before)
    assert not stats.skipped
    assert len(after) == len(before)
    return text_of(before), text_of(after)


def check_only_nops_changed(before: bytes, after: bytes) -> None:
    """Every changed byte was a one-byte nop, and every instruction start outside the
    runs is still an instruction start."""
    nop_bytes = {a for a, s, m in insns(before) if s == 1 and m == "nop"}
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if b != a:
            assert i in nop_bytes, f"byte {i:#x} changed but was no one-byte nop"
    assert starts(before) - nop_bytes <= starts(after)


# --- the encodings ------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, MAX_NOP + 1))
def test_every_encoding_is_one_nop_the_verifier_accepts(n):
    raw = NOPS[n]
    assert len(raw) == n
    ((_, size, mnemonic),) = insns(raw)
    assert size == n and mnemonic in ("nop", "xchg")
    for mode in abi.ISOLATION_MODES:
        kind = verifier.classify(raw, mode)
        assert not kind.rule and not kind.role, f"{raw.hex()}: {kind.reason}"


@pytest.mark.parametrize("length", [1, 2, 10, 11, 12, 22, 23, 31, 32])
def test_fill_is_the_fewest_nops(length):
    fill = nop_fill(length)
    assert len(fill) == length
    assert len(insns(fill)) == -(-length // MAX_NOP)
    assert all(m.startswith(("nop", "xchg")) for _, _, m in insns(fill))


# --- crafted objects ----------------------------------------------------------------------


def test_bundle_padding_runs_are_merged(tmp_path):
    # Each locked group of 30 bytes cannot share a bundle with what precedes it: `as` pads.
    group = "\t.bundle_lock\n" + "\tmovabsq $0x1122334455667788, %rax\n" * 3 + \
        "\t.bundle_unlock\n"
    obj = assemble(tmp_path, f"f:\n\tmovl $1, %eax\n{group}\taddl $1, %eax\n{group}\tret")
    before, after = merged(obj)
    runs = one_byte_nops(before)
    assert runs > 50
    assert one_byte_nops(after) == 0
    check_only_nops_changed(before, after)
    assert len(insns(after)) <= len(insns(before)) - runs + 8


def test_runs_split_at_bundle_boundaries(tmp_path):
    obj = assemble(tmp_path, "f:\n\tmovl $1, %eax\n" + "\tnop\n" * 70 + "\tret")
    before, after = merged(obj)
    check_only_nops_changed(before, after)
    for a, s, _ in insns(after):
        assert a // abi.BUNDLE_SIZE == (a + s - 1) // abi.BUNDLE_SIZE, f"nop at {a:#x} crosses"
    # 5..31 | 32..63 | 64..74: three runs, each merged on its own.
    assert {a for a, _, _ in insns(after)} >= {5, 32, 64}
    assert len(insns(after)) == 2 + 3 + 3 + 1


@pytest.mark.parametrize("kind", ["jmp", "jne", "call", "loop"])
def test_runs_split_at_branch_targets(tmp_path, kind):
    body = (f"f:\n\t{kind} 1f\n" + "\tnop\n" * 6 + "1:\n" + "\tnop\n" * 6 + "\tret")
    obj = assemble(tmp_path, body)
    before, after = merged(obj)
    target = next(a + s for a, s, m in insns(before) if m == kind) + 6
    assert target in starts(after)
    check_only_nops_changed(before, after)


def test_backward_branch_target_splits_too(tmp_path):
    obj = assemble(tmp_path, "f:\n" + "\tnop\n" * 4 + "1:\n" + "\tnop\n" * 4 + "\tjmp 1b")
    before, after = merged(obj)
    assert 4 in starts(after)
    assert one_byte_nops(after) == 0


def test_runs_split_at_symbols(tmp_path):
    body = "f:\n" + "\tnop\n" * 5 + "mid:\n" + "\tnop\n" * 5 + "\t.globl g\ng:\n" + \
        "\tnop\n" * 5 + "\tret"
    before, after = merged(assemble(tmp_path, body))
    assert {0, 5, 10} <= starts(after)
    assert len(insns(after)) == 3 + 1


def test_runs_split_at_relocation_targets(tmp_path):
    # A jump table / label address in data: R_X86_64_64 against .text + addend, no symbol.
    body = ("f:\n" + "\tnop\n" * 5 + ".Llab:\n" + "\tnop\n" * 5 + "\tret\n"
            "\t.data\n\t.quad .Llab\n")
    before, after = merged(assemble(tmp_path, body))
    assert 5 in starts(after)
    assert len(insns(after)) == 2 + 1


def test_runs_split_at_pc_relative_targets(tmp_path):
    # In another section the label's address needs a PC32 relocation (addend = label - 4);
    # in the same section `as` resolves it, and the operand itself names the target.
    body = ("f:\n\tleaq .Lin(%rip), %rax\n" + "\tnop\n" * 5 + ".Lin:\n" + "\tnop\n" * 5 +
            ".Lx:\n" + "\tnop\n" * 5 + "\tret\n"
            "\t.section .text.other,\"ax\",@progbits\n\tleaq .Lx(%rip), %rax\n\tret\n")
    obj = assemble(tmp_path, body)
    before, after = merged(obj)
    lea = insns(before)[0][1]
    assert {lea + 5, lea + 10} <= starts(after)
    check_only_nops_changed(before, after)


def test_run_under_a_relocation_is_left_alone(tmp_path):
    body = "f:\n\tret\n" + ".Lr:\n" + "\tnop\n" * 8 + "\t.reloc .Lr+2, R_X86_64_NONE, f\n\tret"
    before, after = merged(assemble(tmp_path, body))
    assert before == after


def test_relocation_next_to_a_run_does_not_block_it(tmp_path):
    # The PC32 field of the lea ends where the run starts.
    body = "f:\n\tleaq ext(%rip), %rax\n" + "\tnop\n" * 8 + "\tret"
    before, after = merged(assemble(tmp_path, body))
    assert one_byte_nops(before) == 8
    assert one_byte_nops(after) == 0


def test_merging_twice_changes_nothing_more(tmp_path):
    obj = assemble(tmp_path, "f:\n\tmovl $1, %eax\n" + "\tnop\n" * 70 + "1:\n\tnop\n\tjmp 1b")
    once, _ = merge_bytes(obj.read_bytes())
    twice, stats = merge_bytes(once)
    assert once != obj.read_bytes()
    assert twice == once and stats.runs == 0


def test_unexpected_input_is_left_untouched(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file at all")
    assert merge_object(junk).skipped
    assert junk.read_bytes() == b"not an ELF file at all"
    # 0x06 (push %es) does not decode in 64-bit mode: the whole object stays as it is.
    obj = assemble(tmp_path, "f:\n" + "\tnop\n" * 8 + "\t.byte 0x06\n" + "\tnop\n" * 8)
    data = obj.read_bytes()
    stats = merge_object(obj)
    assert "decode" in stats.skipped
    assert obj.read_bytes() == data


# --- real programs ------------------------------------------------------------------------


def test_static_nops_on_a_real_program(tmp_path, sandbox_libc, monkeypatch):

    flags = ["-O2", "-nostdinc", "-isystem", str(sandbox_libc["code+data"] / "include"),
             "-isystem", unit.find_compiler().include_dir]
    src = PROGRAMS / "recursion.c"
    with_merge = tmp_path / "with.o"
    unit.compile_unit(src, with_merge, isolation="code+data", flags=flags)
    monkeypatch.setattr(nopmerge, "merge_object", lambda path: nopmerge.MergeStats())
    without = tmp_path / "without.o"
    unit.compile_unit(src, without, isolation="code+data", flags=flags)
    plain, done = text_of(without.read_bytes()), text_of(with_merge.read_bytes())
    assert len(plain) == len(done)
    check_only_nops_changed(plain, done)
    assert one_byte_nops(plain) > 100
    assert one_byte_nops(done) < one_byte_nops(plain) // 5
    assert len(insns(done)) < len(insns(plain))


@pytest.fixture
def rt():
    import tmebox

    with tmebox.Runtime(backend="native", max_sandboxes=4,
                        min_isolation="data") as runtime:  # tests run both modes
        yield runtime


@pytest.mark.parametrize("mode", abi.ISOLATION_MODES)
def test_merged_image_verifies_and_runs_the_same(build_image, rt, mode, monkeypatch):
    src = PROGRAMS / "qsort.c"
    merged_img = build_image(src, mode=mode, name="merged")  # verified by cc.build
    monkeypatch.setattr(nopmerge, "merge_object", lambda path: nopmerge.MergeStats())
    plain_img = build_image(src, mode=mode, name="plain")
    if mode == "code+data":  # data mode has no bundles, so (nearly) no one-byte runs
        assert merged_img.read_bytes() != plain_img.read_bytes()
    outputs = []
    for img in (merged_img, plain_img):
        out = bytearray()
        sb = rt.spawn(rt.load(img), argv=["qsort"], stdout=out, timeout=20)
        outputs.append((sb.run(), bytes(out)))
    assert outputs[0] == outputs[1]
    assert outputs[0][1]
