"""The escape fuzzer (tmebox.fuzz): the real CPU as the verifier's oracle.

The oracle tests run hand-written escapes straight through the monitor (no verifier): each must
be flagged, so that the campaign's silence means something. The campaign test runs a fixed
seed and a fixed number of sequences (reproducible), and asserts that plenty was accepted and
executed, and that nothing escaped.
"""

from __future__ import annotations

import pytest

from tmebox.fuzz import Oracle, Outcome, Sample, campaign
from tmebox.fuzz.oracle import BASES
from tmebox.trusted import verifier

STACK = 0x800000  # window offset inside the child's R+W region
REGS = tuple([0x1000] * 4 + [STACK] + [0x1000] * 11)

ESCAPES = {
    "absolute load": "488b042500100000",  # mov rax, [0x1000]
    "syscall": "0f05",
    "wrgsbase": "f3480faed8",  # wrgsbase rax
    "jump outside": "48b80000adde00000000ffe0",  # mov rax, 0xdead0000; jmp rax
    "writes r14": "4989c6cc",  # mov r14, rax
    "non-canonical load": "48b8000000000080000048" "8b00",  # mov rax, 1 << 47; mov rax, [rax]
    "rsp doubled": "0fbce04a8d2434cc",  # bsf esp, eax (eax = 0); lea rsp, [rsp + r14]
    "16-bit jump": "4066e900000000cc",  # AMD: jmp to ip & 0xffff
}
CONTAINED = {
    "int3": ("90cc", Outcome.END),
    "gs load in the guard": ("65678b07cc", Outcome.FAULT),
    "gs load past the mapped part": ("65678b0425f0ffff7fcc", Outcome.FAULT),
    "ud2": ("0f0b", Outcome.FAULT),
    "endless loop": ("ebfe", Outcome.TIMEOUT),
    "misaligned movaps": ("65670f2800cc", Outcome.FAULT),  # gs:[eax], eax = window offset + 1
}


@pytest.fixture(scope="module")
def cpu():
    with Oracle() as oracle:
        yield oracle


@pytest.mark.parametrize("base_index", range(len(BASES)))
@pytest.mark.parametrize("name", ESCAPES)
def test_oracle_flags_escapes(cpu: Oracle, name: str, base_index: int) -> None:
    regs = (0,) + REGS[1:] if name == "rsp doubled" else REGS
    result = cpu.run([Sample(bytes.fromhex(ESCAPES[name]), regs, base_index=base_index)])[0]
    assert result.outcome == Outcome.ESCAPE, result.summary()


@pytest.mark.parametrize("name", CONTAINED)
def test_oracle_accepts_contained_stops(cpu: Oracle, name: str) -> None:
    code, want = CONTAINED[name]
    regs = (0x20001,) + REGS[1:] if name == "misaligned movaps" else REGS
    result = cpu.run([Sample(bytes.fromhex(code), regs)])[0]
    assert result.outcome == want, result.summary()


def test_campaign_runs_and_finds_no_escape() -> None:
    stats = campaign.run(6000, seed=10)
    assert stats.executed >= 3500, stats.summary()
    assert stats.outcomes[Outcome.END] >= 800 and stats.outcomes[Outcome.FAULT] >= 2000, \
        stats.summary()
    assert not stats.escapes, "\n\n".join(e.report() for e in stats.escapes[:5])


# Found by this fuzzer (seed 3, 2,000 sequences): bt/bts/btr/btc with a register bit offset
# address `base + (offset >> 6) * 8` with a signed 64-bit offset. With 0x67 the CPU truncates
# the sum to 32 bits (contained); %rip-relative has 64-bit addressing, so the verifier's
# "rip target inside the image" says nothing about the byte the instruction touches.
BIT_STRING_ESCAPE = "480fb32d00000000cc"  # btr [rip + 0], rbp; int3


def test_rip_relative_bit_string_escapes_on_the_cpu(cpu: Oracle) -> None:
    regs = REGS[:5] + (1 << 35,) + REGS[6:]  # %rbp: 4 GiB worth of bits
    result = cpu.run([Sample(bytes.fromhex(BIT_STRING_ESCAPE), regs, base_index=1)])[0]
    assert result.outcome == Outcome.ESCAPE and result.address == (6 << 32) + 0x11008, \
        result.summary()


@pytest.mark.parametrize("code", ["480fb32d00000000cc", "0fa30500000000cc", "660fab0500000000cc",
                                  "480fbb0d00000000cc"])
def test_verifier_rejects_rip_relative_bit_strings(code: str) -> None:
    verdict = verifier.verify_code(bytes.fromhex(code), code_offset=0x1000, image_size=0x10000)
    assert verdict.rule == "memory-operand", "bt*/[rip], reg reaches any address"


# The same forms with %gs + 0x67 stay: the CPU wraps operand + offset/8 to 32 bits.
@pytest.mark.parametrize("offset", [1 << 35, -(1 << 40), (1 << 63) - 1, -(1 << 63), 0x1234 << 3])
@pytest.mark.parametrize("code", ["6567480fb328cc", "6567480fa328cc", "65670fbb28cc"])
def test_gs32_bit_strings_stay_in_the_window(cpu: Oracle, code: str, offset: int) -> None:
    assert verifier.verify_code(bytes.fromhex(code), code_offset=0x1000, image_size=0x10000).ok
    regs = REGS[:5] + (offset % (1 << 64),) + REGS[6:]
    result = cpu.run([Sample(bytes.fromhex(code), regs, base_index=1)])[0]
    assert result.outcome in (Outcome.END, Outcome.FAULT), result.summary()


# Found by the long run (bench/escape_fuzz.py, seed 20261203, within 40,320 sequences): the
# 8f /0 encoding of `pop %rsp` was taken for an ordinary stack form; only 5c was refused.
POP_RSP_ESCAPE = "4883e480f2450fc2ce018fc4"  # and rsp,-128; cmpltsd; pop rsp


def test_pop_rsp_8f_form_escapes_on_the_cpu(cpu: Oracle) -> None:
    result = cpu.run([Sample(bytes.fromhex(POP_RSP_ESCAPE + "5bcc"), REGS, base_index=2)])[0]
    assert result.outcome == Outcome.ESCAPE, result.summary()


@pytest.mark.parametrize("code", ["8fc4", "488fc4", "408fc4", "4c8fc4", "5c", "485c"])
@pytest.mark.parametrize("mode", ["data", "code+data"])
def test_verifier_rejects_every_pop_into_rsp(code: str, mode: str) -> None:
    verdict = verifier.verify_code(bytes.fromhex(code + "cc"), code_offset=0x1000,
                                   image_size=0x10000, isolation=mode)
    assert verdict.rule == "stack-pointer", "pop %rsp sets %rsp to anything"
