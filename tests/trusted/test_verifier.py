"""The verifier against the corpus (verifier_corpus/): every rule has escapes it must reject."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "verifier_corpus"))
import asmkit  # noqa: E402

from tmebox import cli  # noqa: E402
from tmebox.trusted import abi, decode, verifier  # noqa: E402
from tmebox.trusted import verdict as verdicts  # noqa: E402
from tmebox.trusted.image import CpuLevel, Image  # noqa: E402
from tmebox.trusted.verdict import Store  # noqa: E402

CORPUS = Path(__file__).parent / "verifier_corpus"
MODES = {"both": abi.ISOLATION_MODES, "data": ("data",), "code+data": ("code+data",)}


@dataclass(frozen=True)
class Case:
    file: str
    title: str
    modes: tuple[str, ...]
    rule: str  # "" for pass cases
    asm: str
    level: str = "x86-64"


def load_cases(kind: str) -> list[Case]:
    cases = []
    for path in sorted((CORPUS / kind).glob("*.s")):
        header: list[str] = []
        file_mode = "both"
        file_rule = path.stem if kind == "reject" else ""
        file_level = "x86-64"
        found: list[dict] = []
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "# case":
                found.append({"title": value.strip(), "mode": file_mode, "rule": file_rule,
                              "level": file_level, "lines": []})
            elif key == "# mode" and not found:
                file_mode = value.strip()
            elif key == "# rule" and not found:
                file_rule = value.strip()
            elif key == "# level" and not found:
                file_level = value.strip()
            elif key in ("# mode", "# rule", "# level"):
                found[-1][key[2:]] = value.strip()
            else:
                (found[-1]["lines"] if found else header).append(line)
        cases += [Case(path.name, c["title"], MODES[c["mode"]], c["rule"],
                       "\n".join(header + c["lines"]), c["level"]) for c in found]
    return cases


PASS = load_cases("pass")
REJECT = load_cases("reject")


def verify_snippet(asm: str, mode: str, workdir: Path, **kwargs) -> verifier.Verdict:
    code = asmkit.assemble(asm, workdir)
    return verifier.verify_code(code, code_offset=asmkit.CODE_OFFSET,
                                image_size=asmkit.SNIPPET_IMAGE_SIZE, isolation=mode, **kwargs)


@pytest.mark.parametrize(("case", "mode"), [(c, m) for c in PASS for m in c.modes],
                         ids=lambda x: x.title if isinstance(x, Case) else x)
def test_pass_corpus(case: Case, mode: str, tmp_path: Path) -> None:
    verdict = verify_snippet(case.asm, mode, tmp_path, level=CpuLevel(case.level))
    assert verdict.ok, f"{case.file}: {case.title}: {verdict.summary()}"
    assert verdict.instructions > 0


@pytest.mark.parametrize(("case", "mode"), [(c, m) for c in REJECT for m in c.modes],
                         ids=lambda x: x.title if isinstance(x, Case) else x)
def test_reject_corpus(case: Case, mode: str, tmp_path: Path) -> None:
    verdict = verify_snippet(case.asm, mode, tmp_path, level=CpuLevel(case.level))
    assert not verdict.ok, f"{case.file}: {case.title}: accepted"
    assert verdict.rule == case.rule, f"{case.file}: {case.title}: {verdict.summary()}"
    assert verdict.reason and verdict.address is not None


def test_every_rule_has_a_rejected_example() -> None:
    covered = {c.rule for c in REJECT} | {"entry-point"}  # entry-point: tests below
    assert covered == set(verifier.RULES)


def test_rejection_summary_names_instruction_and_rule(tmp_path: Path) -> None:
    verdict = verify_snippet("nop\nmov qword ptr [rdi], rax", "code+data", tmp_path)
    assert verdict.address == asmkit.CODE_OFFSET + 1
    assert verdict.bytes == bytes.fromhex("488907")
    assert verdict.summary() == (
        "<code>: REJECTED at 0x1001: 48 89 07  mov qword ptr [rdi], rax — rule memory-operand: "
        "memory access without %gs + 32-bit addressing")


def test_ok_summary(tmp_path: Path) -> None:
    verdict = verify_snippet("nop\nnop", "data", tmp_path)
    assert verdict.summary() == "<code>: ok (data, 2 instructions, 2 bytes)"


def test_entry_point_inside_an_instruction_is_rejected(tmp_path: Path) -> None:
    asm = "mov rax, 0x050f\nnop"
    base = asmkit.CODE_OFFSET
    assert verify_snippet(asm, "data", tmp_path, entries={"entry": base}).ok
    verdict = verify_snippet(asm, "data", tmp_path, entries={"export 'f'": base + 3})
    assert (verdict.ok, verdict.rule) == (False, "entry-point")


def test_entry_point_inside_a_group_is_rejected(tmp_path: Path) -> None:
    asm = (".bundle_align_mode 5\n.bundle_lock\nand r11d, -32\nor r11, r14\njmp r11\n"
           ".bundle_unlock\n")
    for off in (4, 7):  # the or and the jmp of the masking group
        verdict = verify_snippet(asm, "code+data", tmp_path,
                                 entries={"entry": asmkit.CODE_OFFSET + off})
        assert (verdict.ok, verdict.rule) == (False, "entry-point"), verdict.summary()
    assert verify_snippet(asm, "code+data", tmp_path, entries={"entry": asmkit.CODE_OFFSET}).ok


def test_decoder_disagreement_is_rejected(tmp_path: Path, monkeypatch) -> None:
    code = asmkit.assemble("nop\nmov rax, rcx\nnop", tmp_path)
    addresses, sizes = decode.capstone_boundaries(code, asmkit.CODE_OFFSET)
    assert (list(addresses), list(sizes)) == ([0x1000, 0x1001, 0x1004], [1, 3, 1])
    # Pretend capstone saw a 2-byte instruction at 0x1001: iced-x86 disagrees, and it is named.
    monkeypatch.setattr(decode, "capstone_boundaries", lambda c, a: (
        np.array([0x1000, 0x1001, 0x1003, 0x1004], np.uint64), np.array([1, 2, 1, 1], np.uint16)))
    verdict = verifier.verify_code(code, code_offset=asmkit.CODE_OFFSET, image_size=0x10000)
    assert (verdict.ok, verdict.rule, verdict.address) == (False, "decodes", 0x1001)
    # Or that capstone stopped early (an instruction it cannot decode).
    monkeypatch.setattr(decode, "capstone_boundaries", lambda c, a: (
        np.array([0x1000], np.uint64), np.array([1], np.uint16)))
    verdict = verifier.verify_code(code, code_offset=asmkit.CODE_OFFSET, image_size=0x10000)
    assert (verdict.ok, verdict.rule, verdict.address) == (False, "decodes", 0x1001)


def test_capstone_stops_at_undecodable_bytes() -> None:
    addresses, sizes = decode.capstone_boundaries(b"\x90\x90\x06\x90", 0x40)
    assert list(addresses) == [0x40, 0x41] and sizes.sum() == 2


def test_capstone_boundaries_span_many_chunks() -> None:
    code = b"\x48\x89\xc8" * 40000  # mov rax, rcx: more than one cs_disasm chunk
    addresses, sizes = decode.capstone_boundaries(code, 0x1000)
    assert len(addresses) == 40000 and int(addresses[-1]) == 0x1000 + 3 * 39999
    assert int(sizes.sum()) == len(code)


def test_misaligned_code_start_is_rejected_in_code_data() -> None:
    verdict = verifier.verify_code(b"\x90", code_offset=0x1001, image_size=0x2000)
    assert (verdict.ok, verdict.rule) == (False, "bundle")
    assert verifier.verify_code(b"\x90", code_offset=0x1001, image_size=0x2000,
                                isolation="data").ok


PROGRAM = """
    .text
    .bundle_align_mode 5
    .globl _start
    .p2align 5
_start:
    mov rax, qword ptr [rip + self_pointer]
    mov qword ptr gs:[esp + 8], rax
    .bundle_lock
    .fill 27, 1, 0x90
    call __tmebox_rt_syscall
    .bundle_unlock
    jmp _start
"""


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TMEBOX_CACHE", str(tmp_path))
    path = tmp_path / "verdicts"
    monkeypatch.setattr(verdicts, "_VERDICTS", {})
    return path


def entries(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.iterdir() if p.name != Store.KEY_FILE]


def test_forged_cache_entry_is_not_believed(tmp_path: Path, cache_dir: Path) -> None:
    """A process that can write the cache but not read the key cannot plant "ok"."""
    path = asmkit.link_image(PROGRAM.replace("jmp _start", "syscall"), tmp_path)
    rejected = verifier.verify_file(path)
    assert not rejected.ok
    (entry,) = entries(cache_dir)
    tag, _, body = entry.read_text().partition("\n")
    forged = body.replace('"ok": false', '"ok": true')
    assert forged != body
    entry.write_text(f"{tag}\n{forged}")
    verdicts._VERDICTS.clear()
    assert not verifier.verify_file(path).ok
    entry.write_text(f"{'0' * 64}\n{forged}")
    verdicts._VERDICTS.clear()
    assert not verifier.verify_file(path).ok


def test_cache_shared_with_others_is_not_used(tmp_path: Path, cache_dir: Path) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path)
    verifier.verify_file(path)
    key = cache_dir / Store.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    store = Store(cache_dir)
    (entry,) = entries(cache_dir)
    assert store.get(entry.name) is not None
    cache_dir.chmod(0o777)  # anyone may now replace entries and the key
    assert store.get(entry.name) is None
    cache_dir.chmod(0o700)
    key.chmod(0o644)  # anyone may read the key, so forge tags
    assert store.get(entry.name) is None
    key.chmod(0o600)
    assert store.get(entry.name) is not None


def test_verify_image_accepts_a_linked_program(tmp_path: Path) -> None:
    image = Image.load(asmkit.link_image(PROGRAM, tmp_path))
    verdict = verifier.verify_image(image)
    assert verdict.ok, verdict.summary()
    # The code after the runtime page, padded with int3 to the page end, is what is verified.
    assert verdict.code_bytes == abi.PAGE_SIZE
    assert verdict.summary().startswith(f"{image.name}: ok (code+data, ")


def test_runtime_page_is_not_decoded(tmp_path: Path) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path)
    data = bytearray(path.read_bytes())
    image = Image.load(path)
    rt_file_offset = data.find(b"\xcc" * abi.RT_PAGE_SIZE)
    data[rt_file_offset:rt_file_offset + 2] = b"\x0f\x05"  # syscall in the runtime page
    assert verifier.verify_image(Image.from_bytes(bytes(data), "patched")).ok
    assert image.rt_range == (0, abi.RT_PAGE_SIZE)


def test_verify_image_rejects_an_escape(tmp_path: Path) -> None:
    path = asmkit.link_image(PROGRAM.replace("gs:[esp + 8]", "[rsp + 8]"), tmp_path)
    verdict = verifier.verify_image(Image.load(path))
    assert (verdict.ok, verdict.rule) == (False, "memory-operand")


def test_verify_image_checks_exports(tmp_path: Path) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path, info={"exports": {"f": 0x1001}})
    verdict = verifier.verify_image(Image.load(path))
    assert (verdict.ok, verdict.rule, verdict.address) == (False, "entry-point", 0x1001)


def test_data_mode_image(tmp_path: Path) -> None:
    path = asmkit.link_image(PROGRAM.replace("jmp _start", "ret"), tmp_path, isolation="data")
    assert verifier.verify_image(Image.load(path)).ok
    path = asmkit.link_image(PROGRAM.replace("jmp _start", "ret"), tmp_path / "cd")
    assert verifier.verify_image(Image.load(path)).rule == "return"


def test_verify_file_caches_by_content_and_verifier(tmp_path: Path, cache_dir: Path,
                                                    monkeypatch) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path)
    calls = []
    real = verifier.verify_image
    monkeypatch.setattr(verifier, "verify_image", lambda im: calls.append(im) or real(im))
    first = verifier.verify_file(path)
    assert first.ok and len(calls) == 1
    assert len(entries(cache_dir)) == 1
    assert verifier.verify_file(path) == first and len(calls) == 1  # memory
    monkeypatch.setattr(verdicts, "_VERDICTS", {})
    assert verifier.verify_file(path) == first and len(calls) == 1  # disk
    copy = tmp_path / "copy.box"
    copy.write_bytes(path.read_bytes())
    assert verifier.verify_file(copy).name == str(copy) and len(calls) == 1
    monkeypatch.setattr(verdicts, "_verifier_hash", lambda: "a different verifier")
    assert verifier.verify_file(path).ok and len(calls) == 2
    assert len(entries(cache_dir)) == 2


def test_verify_file_caches_rejections(tmp_path: Path, cache_dir: Path) -> None:
    path = asmkit.link_image(PROGRAM.replace("jmp _start", "ret"), tmp_path)
    first = verifier.verify_file(path)
    verdicts._VERDICTS.clear()
    again = verifier.verify_file(path)
    assert not again.ok and again == first and again.bytes == b"\xc3"


def test_corrupt_cache_entry_is_ignored(tmp_path: Path, cache_dir: Path) -> None:
    path = asmkit.link_image(PROGRAM, tmp_path)
    verifier.verify_file(path)
    (entry,) = entries(cache_dir)
    entry.write_text("{not json")
    verdicts._VERDICTS.clear()
    assert verifier.verify_file(path).ok


def test_cli_verify(tmp_path: Path, cache_dir: Path, capsys) -> None:
    good = asmkit.link_image(PROGRAM, tmp_path / "good")
    bad = asmkit.link_image(PROGRAM.replace("jmp _start", "syscall"), tmp_path / "bad")
    assert cli.main(["verify", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok (code+data, ")
    assert cli.main(["verify", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"{bad}: REJECTED at 0x") and "rule runtime-call" in out[1]
    junk = tmp_path / "junk.box"
    junk.write_bytes(b"\x7fELF not really")
    assert cli.main(["verify", str(junk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(junk) in err[0]


DOC = Path(__file__).resolve().parents[2] / "docs" / "verifier.md"


def test_doc_examples_run() -> None:
    import re

    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} example {i + 1}", "exec"), namespace)  # noqa: S102


def test_doc_rules_table_lists_every_rule() -> None:
    text = DOC.read_text()
    for rule in verifier.RULES:
        assert f"| `{rule}`" in text, rule


def test_real_images_verify(build_image) -> None:
    source = Path(__file__).parents[1] / "toolchain" / "programs" / "printf.c"
    for mode, opt in (("code+data", "0"), ("data", "2")):
        path = build_image(source, mode, opt=opt, name=f"printf-O{opt}")
        verdict = verifier.verify_image(Image.load(path))
        assert verdict.ok and verdict.isolation == mode, verdict.summary()
        assert verdict.instructions > 1000


def test_verification_from_threads_agrees(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    code = asmkit.assemble("\n".join(["mov rax, qword ptr gs:[edi + 8]", "add rax, rcx",
                                      "nop dword ptr [rax]"] * 2000), tmp_path)
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda _: verifier.verify_code(
            code, code_offset=asmkit.CODE_OFFSET, image_size=0x100000, isolation="data"),
            range(8)))
    assert all(v.ok and v.instructions == 6000 for v in verdicts)


# --- the prefix rule on its own (finding 2 of issue 10), beyond the corpus ------------------

LEGACY = (0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67)
# Instructions whose canonical encodings the rule must accept: REX + opcode, and gs/0x67 forms.
REX_FORMS = [bytes.fromhex(h) for h in ("4889c8", "48e900000000", "480f8500000000",
                                        "48e800000000", "41ffe3", "4153", "4d09f3")]


def _prefix_verdict(raw: bytes) -> str:
    from tmebox.trusted import rules

    ins = next(iter(__import__("iced_x86").Decoder(64, raw, ip=0)))
    try:
        rules.rule_prefixes(rules.Insn.of(ins, raw, "code+data"))
    except rules.Reject as e:
        return e.rule
    return "ok"


@pytest.mark.parametrize("form", REX_FORMS, ids=lambda b: b.hex())
def test_prefix_rule_alone_rejects_every_legacy_prefix_after_rex(form: bytes) -> None:
    assert _prefix_verdict(form) == "ok"
    for p in LEGACY:
        assert _prefix_verdict(form[:1] + bytes([p]) + form[1:]) == "prefixes", hex(p)
    assert _prefix_verdict(b"\x40" + form) == "prefixes"  # a second REX


def test_prefix_rule_alone_accepts_only_gnu_as_order() -> None:
    from itertools import permutations

    body = bytes.fromhex("0f1100")  # movups gs:[eax], xmm0 with the prefixes below
    for n in range(1, 5):
        for combo in permutations((0x65, 0x67, 0x66, 0xF3), n):
            raw = bytes(combo) + body
            order = [(0x65, 0x67, 0x66, 0xF3).index(b) for b in combo]
            expected = "ok" if order == sorted(order) else "prefixes"
            assert _prefix_verdict(raw) == expected, raw.hex()
    for p in LEGACY:  # any prefix twice
        assert _prefix_verdict(bytes([p, p]) + body) == "prefixes", hex(p)


def test_prefix_rule_alone_rejects_prefixes_on_branches() -> None:
    for branch in ("e900000000", "eb00", "0f8500000000", "e800000000", "c3", "ffe0", "ffd0"):
        raw = bytes.fromhex(branch)
        assert _prefix_verdict(raw) == "ok"
        for p in LEGACY:
            if (p, raw[0]) == (0x67, 0xE8):
                continue  # `addr32 call`: ld's GOTPCRELX relaxation, a plain call on every CPU
            assert _prefix_verdict(bytes([p]) + raw) == "prefixes", (hex(p), branch)


def test_rewriter_sections_name_verifier_rules() -> None:
    """The untrusted rewriter is organised by the rules it emits code for, under their ids."""
    import re

    from tmebox.toolchain import rewriter

    named: set[str] = set()
    for line in Path(rewriter.__file__).read_text().splitlines():
        m = re.match(r"\s*# -- .*verifier rules? ([\w, +-]+?) -+$", line)
        if m:
            named |= {r.strip() for r in m.group(1).split(",")}
    assert named <= set(verifier.RULES), named - set(verifier.RULES)
    # What only the verifier can check: decoding, and positions the rewriter does not know.
    verifier_only = {"decodes", "direct-branch-target", "entry-point", "rip-target"}
    assert set(verifier.RULES) - named <= verifier_only, set(verifier.RULES) - named
