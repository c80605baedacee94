"""The escape fuzzer (tmebox.fuzz): the real CPU as the verifier's oracle.

The oracle tests run hand-written escapes straight through the monitor (no verifier): each must
be flagged, so that the campaign's silence means something. The campaign test runs a fixed
seed and a fixed number of sequences (reproducible), and asserts that plenty was accepted and
executed, and that nothing escaped.
"""

from __future__ import annotations

import pytest

from tmebox.fuzz import Oracle, Outcome, Sample, campaign
from tmebox.fuzz.oracle import BASES, CODE_ADDRESS_OFFSET, IMAGE_SIZE
from tmebox.trusted import verifier
from tmebox.trusted.cpu import host_level
from tmebox.trusted.image import CpuLevel

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


# x86-64-v3's memory forms (masked loads and stores, broadcasts, non-temporal loads, the
# half-precision conversions, BMI/MOVBE/CRC32/LZCNT, cmpxchg16b) with %gs + 0x67, as the
# verifier accepts them: the CPU must honour both prefixes. Every register holds a window
# offset with garbage above bit 31, so an ignored 0x67 reaches the neighbouring window (or a
# non-canonical address) and an ignored %gs the unmapped low 4 GiB: only a clean end (the
# int3, no fault) shows the access went where the verifier's model puts it. %ymm1 is all ones
# first (vpcmpeqd), so the masked forms access every element.
V3_MEMORY_FORMS = {
    "6567c5fe6f00": "vmovdqu ymm0, gs:[eax]",
    "6567c5fe7f00": "vmovdqu gs:[eax], ymm0",
    "6567c4e2752c00": "vmaskmovps ymm0, ymm1, gs:[eax]",
    "6567c4e2752e00": "vmaskmovps gs:[eax], ymm1, ymm0",
    "6567c4e2712f00": "vmaskmovpd gs:[eax], xmm1, xmm0",
    "6567c4e2758c00": "vpmaskmovd ymm0, ymm1, gs:[eax]",
    "6567c4e2758e00": "vpmaskmovd gs:[eax], ymm1, ymm0",
    "6567c4e2f58e00": "vpmaskmovq gs:[eax], ymm1, ymm0",
    "6567c4e2f18c00": "vpmaskmovq xmm0, xmm1, gs:[eax]",
    "6567c4e27d1800": "vbroadcastss ymm0, gs:[eax]",
    "6567c4e27d1900": "vbroadcastsd ymm0, gs:[eax]",
    "6567c4e27d1a00": "vbroadcastf128 ymm0, gs:[eax]",
    "6567c4e27d5a00": "vbroadcasti128 ymm0, gs:[eax]",
    "6567c4e27d7800": "vpbroadcastb ymm0, gs:[eax]",
    "6567c4e27d7900": "vpbroadcastw ymm0, gs:[eax]",
    "6567c4e27d5800": "vpbroadcastd ymm0, gs:[eax]",
    "6567c4e27d5900": "vpbroadcastq ymm0, gs:[eax]",
    "6567c4e27d2a00": "vmovntdqa ymm0, gs:[eax]",
    "6567c5fde700": "vmovntdq gs:[eax], ymm0",
    "6567c5fc2b00": "vmovntps gs:[eax], ymm0",
    "6567c5fff000": "vlddqu ymm0, gs:[eax]",
    "6567c4e27d1300": "vcvtph2ps ymm0, gs:[eax]",
    "6567c4e37d1d0000": "vcvtps2ph gs:[eax], ymm0, 0",
    "6567c5f8ae18": "vstmxcsr gs:[eax]",
    "65670f38f008": "movbe ecx, gs:[eax]",
    "6567480f38f108": "movbe gs:[eax], rcx",
    "6567f20f38f108": "crc32 ecx, gs:[eax]",
    "6567f3480fbd08": "lzcnt rcx, gs:[eax]",
    "6567f30fbc08": "tzcnt ecx, gs:[eax]",
    "6567f3480fb808": "popcnt rcx, gs:[eax]",
    "6567c4e268f208": "andn ecx, edx, gs:[eax]",
    "6567c4e2e8f708": "bextr rcx, gs:[eax], rdx",
    "6567c4e268f508": "bzhi ecx, gs:[eax], edx",
    "6567c4e2e9f708": "shlx rcx, gs:[eax], rdx",
    "6567c4e26af708": "sarx ecx, gs:[eax], edx",
    "6567c4e2ebf708": "shrx rcx, gs:[eax], rdx",
    "6567c4e3fbf00805": "rorx rcx, gs:[eax], 5",
    "6567c4e2e3f608": "mulx rcx, rbx, gs:[eax]",
    "6567c4e26bf508": "pdep ecx, edx, gs:[eax]",
    "6567c4e2eaf508": "pext rcx, rdx, gs:[eax]",
    "6567c4e2f0f308": "blsr rcx, gs:[eax]",
    "6567c4e270f318": "blsi ecx, gs:[eax]",
    "6567c4e2f0f310": "blsmsk rcx, gs:[eax]",
    "6567c4e3fd00001b": "vpermq ymm0, gs:[eax], 0x1b",
    "6567c4e375460021": "vperm2i128 ymm0, ymm1, gs:[eax], 0x21",
    "6567c4e375380001": "vinserti128 ymm0, ymm1, gs:[eax], 1",
    "6567c4e37d390801": "vextracti128 gs:[eax], ymm1, 1",
    "6567c4e37d190801": "vextractf128 gs:[eax], ymm1, 1",
    "6567c4e3f9220001": "vpinsrq xmm0, xmm0, gs:[eax], 1",
    "6567c4e379150003": "vpextrw gs:[eax], xmm0, 3",
    "6567c4e379140003": "vpextrb gs:[eax], xmm0, 3",
    "6567c5fa7e00": "vmovq xmm0, gs:[eax]",
    "6567c5f97e00": "vmovd gs:[eax], xmm0",
    "6567c5f01600": "vmovhps xmm0, xmm1, gs:[eax]",
    "6567c5f81300": "vmovlps gs:[eax], xmm0",
    "6567c4e27d1700": "vptest ymm0, gs:[eax]",
    "6567c4e379610000": "vpcmpestri xmm0, gs:[eax], 0",
    "6567c4e2754700": "vpsllvd ymm0, ymm1, gs:[eax]",
    "6567c4e275b800": "vfmadd231ps ymm0, ymm1, gs:[eax]",
    "6567c4e2f19900": "vfmadd132sd xmm0, xmm1, gs:[eax]",
    "6567c4e27d3000": "vpmovzxbw ymm0, gs:[eax]",
    "6567c4417c1001": "vmovups ymm8, gs:[r9d]",
    "6567c4417c113c24": "vmovups gs:[r12d], ymm15",
    "6567c5fd6f00": "vmovdqa ymm0, gs:[eax]",
    "6567f0480fc708": "lock cmpxchg16b gs:[eax]",
    "6567c4e17e6f00": "{vex3} vmovdqu ymm0, gs:[eax]",
    "6567c4e1fe6f00": "vmovdqu ymm0, gs:[eax] with VEX.W1 (ignored)",
}
V3 = pytest.mark.skipif(host_level() is not CpuLevel.V3, reason="needs an x86-64-v3 CPU")


@pytest.fixture(scope="module")
def v3_cpu():
    """A monitor with a 1 s budget: these sequences have no loop, and a 20 ms budget can run
    out on a loaded machine, which would read as a timeout instead of the trap."""
    with Oracle(timeout_us=1_000_000) as oracle:
        yield oracle

ALL_ONES_YMM1 = "c5f576c9"  # vpcmpeqd ymm1, ymm1, ymm1
WINDOW_OFFSET = 0x110000  # in the child's R+W region


@V3
@pytest.mark.parametrize("high", [1, 2, 0xFFFFFFFF])
@pytest.mark.parametrize("code", V3_MEMORY_FORMS, ids=V3_MEMORY_FORMS.get)
def test_v3_memory_forms_honour_gs_and_addr32(v3_cpu: Oracle, code: str, high: int) -> None:
    raw = bytes.fromhex(ALL_ONES_YMM1 + code + "cc")
    assert verifier.verify_code(raw, code_offset=0x1000, image_size=IMAGE_SIZE,
                                level=CpuLevel.V3).ok
    regs = tuple(STACK if i == 4 else high << 32 | WINDOW_OFFSET for i in range(16))
    result = v3_cpu.run([Sample(raw, regs, base_index=1)])[0]
    assert result.outcome == Outcome.END, result.summary()


# The same with base + index*8 (+ disp32) summing past 2^32: the CPU wraps it to the window
# offset, as 32-bit addressing does; %eax = 0x80110000 and %ecx = 0x10000000 (x8 = 2 GiB).
@V3
@pytest.mark.parametrize("code", [
    "6567c4e2752e04c8",  # vmaskmovps gs:[eax + ecx*8], ymm1, ymm0
    "6567c5fe6f04c8",  # vmovdqu ymm0, gs:[eax + ecx*8]
    "6567c4e27d5904c8",  # vpbroadcastq ymm0, gs:[eax + ecx*8]
    "6567c4e2e3f614c8",  # mulx rdx, rbx, gs:[eax + ecx*8]
    "6567480f38f134c8",  # movbe gs:[eax + ecx*8], rsi
])
def test_v3_memory_forms_wrap_32_bit_sums(v3_cpu: Oracle, code: str) -> None:
    raw = bytes.fromhex(ALL_ONES_YMM1 + code + "cc")
    assert verifier.verify_code(raw, code_offset=0x1000, image_size=IMAGE_SIZE,
                                level=CpuLevel.V3).ok
    regs = (1 << 32 | 0x80000000 | WINDOW_OFFSET, 1 << 32 | 0x10000000, *REGS[2:])
    result = v3_cpu.run([Sample(raw, regs, base_index=1)])[0]
    assert result.outcome == Outcome.END, result.summary()


# A 32-byte store whose 32-bit offset ends past 4 GiB: into the guards, a contained fault.
@V3
@pytest.mark.parametrize("code", [
    "6567c5fe7f0425f0ffffff",  # vmovdqu gs:[0xfffffff0], ymm0
    "6567c4e2752e0425f0ffffff",  # vmaskmovps gs:[0xfffffff0], ymm1, ymm0 (all elements)
])
def test_v3_stores_past_4_gib_stop_in_the_guard(v3_cpu: Oracle, code: str) -> None:
    raw = bytes.fromhex(ALL_ONES_YMM1 + code + "cc")
    assert verifier.verify_code(raw, code_offset=0x1000, image_size=IMAGE_SIZE,
                                level=CpuLevel.V3).ok
    result = v3_cpu.run([Sample(raw, REGS, base_index=1)])[0]
    assert result.outcome == Outcome.FAULT, result.summary()


# xgetbv with any %ecx (0 and 1 read XCR0/XINUSE; others #GP, contained) and VEX.L=1 on
# scalar forms (ignored: the CPU runs the scalar instruction, as iced-x86 decodes it).
@V3
@pytest.mark.parametrize(("code", "want"), [
    ("b9000000000f01d0", Outcome.END), ("b9010000000f01d0", Outcome.END),
    ("b9020000000f01d0", Outcome.FAULT), ("b9ffffffff0f01d0", Outcome.FAULT),
    ("c5f658c1", Outcome.END),  # vaddss xmm0, xmm1, xmm1 with L=1
    ("6567c5fe1000", Outcome.END),  # vmovss xmm0, gs:[eax] with L=1
    ("c4e1ff2cc0", Outcome.END),  # vcvttsd2si rax, xmm0 with L=1
])
def test_v3_xgetbv_and_ignored_vex_l(v3_cpu: Oracle, code: str, want: Outcome) -> None:
    raw = bytes.fromhex(code + "cc")
    assert verifier.verify_code(raw, code_offset=0x1000, image_size=IMAGE_SIZE,
                                level=CpuLevel.V3).ok
    regs = tuple(STACK if i == 4 else 1 << 32 | WINDOW_OFFSET for i in range(16))
    result = v3_cpu.run([Sample(raw, regs, base_index=1)])[0]
    assert result.outcome == want, result.summary()
    if want == Outcome.END:
        assert result.rip == result.base + CODE_ADDRESS_OFFSET + len(raw), "CPU length"
