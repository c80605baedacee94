"""Findings 1 and 2 of issue 10 as an attacker builds them: machine code already in the final
code+data form, assembled with plain `as` (no rewriter), linked by `tmebox cc` — which verifies
— and loaded by `Runtime.load` on both backends. The control case (the same file with the
legitimate form) must pass, so each test can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "verifier_corpus"))
import asmkit  # noqa: E402

import tmebox  # noqa: E402
from tmebox.errors import VerificationError  # noqa: E402
from tmebox.toolchain import cc  # noqa: E402

# A function in the final code+data form; {body} is one bundle-locked group.
ATTACK_S = """
    .intel_syntax noprefix
    .bundle_align_mode 5
    .text
    .globl escape
    .type escape, @function
    .p2align 5
escape:
    .bundle_lock
{body}
    .bundle_unlock
    .bundle_lock
    pop r11
    and r11d, -32
    or r11, r14
    push r11
    ret
    .bundle_unlock
"""
MAIN_C = "long escape(long); int main(void) { return (int)escape(0); }\n"
# finding: (attack bytes, the rule that must reject them, a legitimate body of the same shape)
CASES = {
    "bsf-esp": ("    xor eax, eax\n    bsf esp, eax\n    lea rsp, [rsp + r14]", "stack-pointer",
                "    xor eax, eax\n    mov esp, esp\n    lea rsp, [rsp + r14]"),
    "cmpxchg-esp": ("    cmpxchg esp, ecx\n    lea rsp, [rsp + r14]", "stack-pointer",
                    "    mov esp, ecx\n    lea rsp, [rsp + r14]"),
    "rex-66-jmp": ("    .byte 0x40, 0x66, 0xe9, 0, 0, 0, 0", "decodes",
                   "    .byte 0x40, 0xe9, 0, 0, 0, 0"),
    "rex-66-jne": ("    .byte 0x40, 0x66, 0x0f, 0x85, 0, 0, 0, 0", "decodes",
                   "    .byte 0x40, 0x0f, 0x85, 0, 0, 0, 0"),
}


def _object(tmp_path: Path, body: str, name: str) -> Path:
    src = tmp_path / f"{name}.s"
    src.write_text(ATTACK_S.format(body=body))
    obj = tmp_path / f"{name}.o"
    subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True)
    return obj


@pytest.mark.parametrize("finding", sorted(CASES))
def test_tmebox_cc_refuses_the_attack_object(finding: str, tmp_path: Path,
                                             sandbox_libc: dict[str, Path]) -> None:
    attack, rule, legit = CASES[finding]
    main = tmp_path / "main.c"
    main.write_text(MAIN_C)
    (good,) = cc.build([main, _object(tmp_path, legit, "legit")], tmp_path / "good.box",
                       isolation="code+data")
    assert good.is_file()
    with pytest.raises(VerificationError, match=f"rule {rule}"):
        cc.build([main, _object(tmp_path, attack, "attack")], tmp_path / "bad.box",
                 isolation="code+data")
    assert not (tmp_path / "bad.box").exists()


@pytest.mark.parametrize("backend", ["native", "tme"])
@pytest.mark.parametrize("finding", sorted(CASES))
def test_runtime_load_refuses_the_attack_image(finding: str, backend: str,
                                               tmp_path: Path) -> None:
    attack, rule, legit = CASES[finding]
    program = "    .globl _start\n_start:\n    .bundle_align_mode 5\n    .p2align 5\n" \
              "    .bundle_lock\n{body}\n    .bundle_unlock\n    jmp __tmebox_rt_exit\n"
    good = asmkit.link_image(program.format(body=legit), tmp_path / "good")
    bad = asmkit.link_image(program.format(body=attack), tmp_path / "bad")
    with tmebox.Runtime(backend=backend) as rt:
        assert rt.load(good).name
        with pytest.raises(VerificationError, match=f"rule {rule}"):
            rt.load(bad)
