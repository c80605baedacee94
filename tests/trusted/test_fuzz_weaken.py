"""The escape fuzzer's self-test: with a hole of the verifier's past put back (in this process
only), a fixed-seed campaign finds an escape through it, and the real verifier rejects exactly
that sequence by the rule that closed the hole. Silence against the real verifier then means
something."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmebox.fuzz import Oracle, Outcome, Sample, campaign
from tmebox.fuzz.generate import CODE_OFFSET, LEVEL
from tmebox.fuzz.oracle import IMAGE_SIZE
from tmebox.fuzz.weaken import WEAKENINGS, weakened
from tmebox.trusted import verifier

# weakening -> (sequences, seed, the real verifier's rule that rejects what escaped)
CASES = {
    "esp-by-shape": (4000, 1, "stack-pointer"),
    "prefix-after-rex": (6000, 2, {"prefixes", "decodes"}),
    "rip-bit-string": (4000, 4, "memory-operand"),
}
# One known escape per weakening (the and the fuzzer's findings): accepted inside the
# with-block, rejected again after it.
KNOWN = {
    "esp-by-shape": "0fbce04a8d2434cc",  # bsf esp, eax; lea rsp, [rsp + r14]; int3
    "prefix-after-rex": "4066e900000000cc",  # REX, 0x66, jmp rel32: 16-bit on AMD
    "rip-bit-string": "480fb32d00000000cc",  # btr [rip], rbp
}


# A start state inside the window's stack (as the oracle tests use).
STATE = tuple([0x1000] * 4 + [0x800000] + [0x1000] * 11)
# 0x66 after REX makes a near branch 16-bit on AMD CPUs only; elsewhere that hole is one of
# decoding, not of execution, and the CPU cannot show it.
AMD = "AuthenticAMD" in Path("/proc/cpuinfo").read_text()


def _verify(hex_code: str, mode: str = "code+data"):
    return verifier.verify_code(bytes.fromhex(hex_code), code_offset=0x1000, image_size=0x10000,
                                isolation=mode)


def test_every_weakening_has_a_case() -> None:
    assert set(CASES) == set(WEAKENINGS) == set(KNOWN)


@pytest.mark.parametrize("name", WEAKENINGS)
def test_a_weakening_opens_its_hole_and_closes_it_again(name: str) -> None:
    assert not _verify(KNOWN[name]).ok
    with weakened(name):
        assert _verify(KNOWN[name]).ok
    assert not _verify(KNOWN[name]).ok  # the cached verdicts of the weak verifier are gone


def test_unknown_weakening() -> None:
    with pytest.raises(KeyError, match="unknown weakening"), weakened("nope"):
        pass


@pytest.mark.parametrize("name", CASES)
def test_the_fuzzer_finds_the_reopened_hole(name: str) -> None:
    if name == "prefix-after-rex" and not AMD:
        # Elsewhere the CPU ignores that 0x66: the hole is the decoders', and what must hold is
        # that this CPU runs the known sequence as the ordinary jump iced-x86 decodes.
        with Oracle() as cpu:
            result = cpu.run([Sample(bytes.fromhex(KNOWN[name]), STATE)])[0]
        assert result.outcome == Outcome.END, result.summary()
        return
    sequences, seed, rules = CASES[name]
    with weakened(name):
        stats = campaign.run(sequences, seed=seed)
    assert stats.escapes, f"{name}: no escape in {stats.summary()}"
    for escape in stats.escapes:
        c = escape.candidate
        verdict = verifier.verify_code(c.code, code_offset=CODE_OFFSET, image_size=IMAGE_SIZE,
                                       isolation=c.mode, entries={"start": CODE_OFFSET + c.start},
                                       level=LEVEL)  # the level the campaign verified at
        assert not verdict.ok and verdict.rule in ({rules} if isinstance(rules, str) else rules), \
            f"{name}: an escape the real verifier accepts:\n{escape.report()}"
