"""Adversarial: on the tme backend tenants share one pool, and the keys keep them apart.

Every tenant can form every pool offset (its window aliases the whole pool), so these
tests attack for real: read a neighbour's secret at its exact offset, overwrite it,
jump into its code, inspect the raw pool as the host, and reuse a dead tenant's KeyID.
"""

from __future__ import annotations

import random
import struct

import pytest
from asm_image import assemble
from programs import BASIC
from unicorn import x86_const as x86

import tmebox
from tmebox.errors import SandboxFault
from tmebox.runtime.memory import SandboxMemoryError

POOL = 64 << 20
MASK = 0xFFFF_FFFF

JUMPER = r"""
    .globl main
main:
    movl $42, %eax
    ret

    .p2align 5
    .globl jump_to          # the code+data indirect jump: mask to a bundle in the window
jump_to:
    movq %rdi, %r11
    andl $-32, %r11d
    orq %r14, %r11
    jmp *%r11

    .p2align 5
    .globl secret_fn        # what a victim's code does if it ever runs: return a marker
secret_fn:
    movl $0x5ec7e7, %eax
    ret
"""


@pytest.fixture(scope="module")
def basic_plan():
    return assemble(BASIC)


def _runtime(**kw):
    return tmebox.Runtime(backend="tme", max_sandboxes=64, pool_size=POOL, heap_size=1 << 20,
                          resident_pages=2048, **kw)


def _read_words(sb, addr, n):
    """n bytes at addr as sandbox sb's own code reads them (load64 through %gs)."""
    return b"".join(sb.call("load64", addr + i).to_bytes(8, "little", signed=True)
                    for i in range(0, n, 8))


def _provision(sb, secret):
    """A buffer holding secret, written by the tenant's own code."""
    p = sb.alloc(len(secret))
    for i in range(0, len(secret), 8):
        sb.call("store64", p + i, int.from_bytes(secret[i:i + 8], "little"))
    return p


def test_reading_a_neighbours_secret_at_its_exact_offset_gives_garbage(basic_plan):
    rng = random.Random(1)
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        victims = [rt.spawn(img) for _ in range(8)]
        secrets = [rng.randbytes(32) for _ in victims]
        addrs = [_provision(v, s) for v, s in zip(victims, secrets, strict=True)]
        attacker = rt.spawn(img)
        for v, s, p in zip(victims, secrets, addrs, strict=True):
            assert _read_words(v, p, 32) == s  # the owner reads it
            seen = _read_words(attacker, p, 32)  # same pool offset, attacker's key
            assert sum(a == b for a, b in zip(seen, s, strict=True)) <= 4
            assert attacker.memory.read(p, 32) != s  # the host through KeyID k too
        rt.backend.sync()
        raw = rt.backend.platform.dram(0, POOL)
        for s in secrets:
            assert s not in raw and s[:16] not in raw and s[16:] not in raw
        assert all(v.run() == 42 for v in victims)


def test_overwriting_a_neighbours_line_corrupts_it_without_revealing_it(basic_plan):
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        victim, attacker = rt.spawn(img), rt.spawn(img)
        secret = bytes(range(1, 65))
        p = _provision(victim, secret)
        attacker.call("store64", p, 0x4141414141414141)
        got = _read_words(victim, p, 64)
        # The attacker's view of the line is her ciphertext decrypted with its key; its
        # store changed the first 16-byte XTS block of that view, so that block now
        # decrypts to garbage for her. The other blocks went back to DRAM unchanged (XTS
        # encrypts each block on its own), so they still read right.
        assert got[:8] != b"A" * 8
        assert sum(a == b for a, b in zip(got[:16], secret[:16], strict=True)) <= 3
        assert got[16:] == secret[16:]
        assert attacker.call("load64", p) == 0x4141414141414141  # its own bytes, not hers
        assert _read_words(attacker, p + 16, 48) != secret[16:]  # and it learnt nothing


def test_a_write_corrupts_only_the_block_it_hits(basic_plan):
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        victim, attacker = rt.spawn(img), rt.spawn(img)
        secret = bytes(range(128))
        p = _provision(victim, secret)
        attacker.call("store64", p + 64, 0)
        got = _read_words(victim, p, 128)
        assert got[:64] == secret[:64]
        assert sum(a == b for a, b in zip(got[64:80], secret[64:80], strict=True)) <= 3
        assert got[80:] == secret[80:]


def test_integrity_turns_cross_tenant_reads_into_machine_checks(basic_plan):
    with _runtime(integrity=True) as rt:
        img = rt.load_unverified(basic_plan)
        victim, attacker, bystander = rt.spawn(img), rt.spawn(img), rt.spawn(img)
        secret = bytes(range(128))
        p = _provision(victim, secret)
        q = _provision(bystander, b"B" * 64)
        with pytest.raises(SandboxFault) as e:
            attacker.call("load64", p)
        assert e.value.kind == "machine-check"
        assert e.value.address & MASK == p & MASK
        assert attacker.state == "dead"
        # The victim's other line and the bystander are untouched.
        assert _read_words(victim, p + 64, 64) == secret[64:]
        assert _read_words(bystander, q, 64) == b"B" * 64
        assert bystander.run() == 42
        # The line the attacker read is poisoned now: the owner's next read of it faults
        # too (hardware semantics), and the host cannot read it either.
        assert rt.backend.platform.is_poisoned(p & MASK)
        with pytest.raises(SandboxMemoryError, match="machine check"):
            victim.memory.read(p, 8)
        with pytest.raises(SandboxFault) as e:
            victim.call("load64", p)
        assert e.value.kind == "machine-check"


def test_integrity_a_foreign_write_is_dropped_and_poisons_the_victims_line(basic_plan):
    with _runtime(integrity=True) as rt:
        img = rt.load_unverified(basic_plan)
        victim, attacker = rt.spawn(img), rt.spawn(img)
        p = _provision(victim, bytes(range(64)))
        attacker.call("store64", p, 1)  # no fault for the writer (no #MC on a store)...
        assert rt.backend.platform.is_poisoned(p & MASK)  # ...but the line is poisoned
        assert rt.backend.platform.stats.writes_dropped >= 1
        with pytest.raises(SandboxFault) as e:
            victim.call("load64", p)
        assert e.value.kind == "machine-check"


def test_integrity_checks_every_line_of_a_shared_page(basic_plan):
    with _runtime(integrity=True) as rt:
        img = rt.load_unverified(basic_plan)
        a, b = rt.spawn(img), rt.spawn(img)
        pa = _provision(a, b"a" * 64)
        pb = _provision(b, b"b" * 64)
        assert pb & MASK == (pa & MASK) + 64  # one page, two owners
        for _ in range(3):  # the page goes back and forth between the two aliases
            assert _read_words(a, pa, 64) == b"a" * 64
            assert _read_words(b, pb, 64) == b"b" * 64
        a.call("store64", pa + 8, 0x7878787878787878)
        # a's own line works, so the page is mapped in a's window; its neighbour line is
        # still checked on every access.
        with pytest.raises(SandboxFault) as e:
            a.call("load64", pb)
        assert e.value.kind == "machine-check"
        assert e.value.address & MASK == pb & MASK
        with pytest.raises(SandboxFault):
            b.call("load64", pb)  # poisoned by a's read: b's next read of it faults
        rt.backend.sync()
        assert b"x" * 8 not in rt.backend.platform.dram(0, POOL)


def test_jumping_into_a_neighbours_code_never_runs_it():
    plan = assemble(JUMPER, isolation="code+data")
    with _runtime() as rt:
        img = rt.load_unverified(plan)
        victim, attacker = rt.spawn(img), rt.spawn(img)
        target = victim.base + victim._engine.layout.code_lo + plan.exports["secret_fn"]
        assert victim.call("jump_to", target) == 0x5EC7E7  # the victim can jump there
        with pytest.raises(SandboxFault) as e:
            attacker.call("jump_to", target)
        # The page is the victim's code decrypted with the attacker's key, mapped
        # without execute permission: the fetch itself faults.
        assert e.value.kind == "segv"
        assert e.value.address == attacker.base + (target & MASK)
        assert victim.run() == 42


def test_transfer_reencrypts_in_place_for_the_receiver_only(basic_plan):
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        a, b, c = rt.spawn(img), rt.spawn(img), rt.spawn(img)
        msg = bytes(random.Random(3).randbytes(128))
        p = _provision(a, msg)
        plat = rt.backend.platform
        rt.backend.sync()
        before = plat.dram(p & MASK, 128)
        q = a.transfer(p, 128, to=b)
        assert q & MASK == p & MASK and q >> 32 == b.base >> 32  # same pool lines, b's window
        after = plat.dram(p & MASK, 128)
        assert after != before and msg not in after  # re-encrypted where it lies
        assert _read_words(b, q, 128) == msg
        assert b.memory.read(q, 128) == msg
        assert _read_words(a, p, 128) != msg
        assert _read_words(c, p, 128) != msg
        # b owns the buffer now: b may hand it back, a can no longer give it away
        with pytest.raises(tmebox.SandboxError, match="not inside a buffer"):
            a.transfer(p, 64, to=c)
        assert b.transfer(q, 64, to=a) & MASK == p & MASK
        assert _read_words(a, p, 64) == msg[:64]
        assert _read_words(b, q + 64, 64) == msg[64:]


def test_destroy_is_a_cryptographic_erase_and_keyid_reuse_gets_a_fresh_key(basic_plan):
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        victim = rt.spawn(img)
        k = victim.base >> 32
        secret = bytes(random.Random(5).randbytes(64))
        p = _provision(victim, secret)
        rt.backend.sync()
        ciphertext = rt.backend.platform.dram(p & MASK, 64)
        victim.destroy()
        plat = rt.backend.platform
        assert plat.key_kind(k) == "tme"  # CLEAR_KEY: the old key is gone
        assert plat.dram(p & MASK, 64) == ciphertext  # nothing zeroed, nothing readable
        assert plat.read(p & MASK, 64, k) != secret
        heir = rt.spawn(img)
        assert heir.base >> 32 == k and plat.key_kind(k) == "random"
        assert _read_words(heir, p, 64) != secret  # the same KeyID, a different key
        fresh = heir.alloc(64)
        assert fresh & MASK == p & MASK  # the predecessor's lines, handed out again...
        assert _read_words(heir, fresh, 64) == bytes(64)  # ...read as zeros, not leftovers


def test_the_host_sees_only_ciphertext_of_code_and_data(basic_plan):
    with _runtime() as rt:
        img = rt.load_unverified(basic_plan)
        sb = rt.spawn(img)
        L = sb._engine.layout
        rt.backend.sync()
        raw = rt.backend.platform.dram(L.code_lo, 8192)
        code = basic_plan.code[4096:8192]
        assert raw[4096:] != code
        assert code[:64] not in rt.backend.platform.dram(0, POOL)
        assert sb.memory.read(sb.base + L.code_lo + 4096, 4096) == code
        assert sb.run() == 42


@pytest.mark.parametrize("algorithm", ["aes-xts-128", "aes-xts-256"])
def test_integrity_transfer_hands_over_readability(basic_plan, algorithm):
    with _runtime(integrity=True, algorithm=algorithm) as rt:
        img = rt.load_unverified(basic_plan)
        a, b = rt.spawn(img), rt.spawn(img)
        msg = bytes(range(64, 128))
        p = _provision(a, msg)
        q = a.transfer(p, 64, to=b)
        assert _read_words(b, q, 64) == msg
        with pytest.raises(SandboxFault) as e:
            a.call("load64", p)  # no longer a's: a machine check, not the plaintext
        assert e.value.kind == "machine-check"
        assert b.run() == 42


# -- CPU state across tenants: every fresh entry starts from a clean architectural state --

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
# snapshot(p): the CPU state as the call found it, at p: GPRs, RFLAGS, FS/GS base, the
# selectors, an FXSAVE image (x87 environment with 64-bit FIP/FDP, FOP, data registers,
# MXCSR, XMM0-15) and an FNSTENV image. There is no YMM/ZMM/opmask state to read: the
# emulator has no AVX (test below).
SNAP_GPRS, SNAP_RFLAGS, SNAP_FSBASE, SNAP_GSBASE, SNAP_SEL = 0, 0x80, 0x88, 0x90, 0x98
SNAP_FXSAVE, SNAP_FNSTENV, SNAP_SIZE = 0x100, 0x300, 0x340
STATE = r"""
    .globl main
main:
    xorl %eax, %eax
    ret

    .globl snapshot
snapshot:
""" + "".join(f"    movq %{r}, %gs:{8 * i}(%edi)\n" for i, r in enumerate(_GPRS)) + rf"""
    pushfq
    popq %rax
    movq %rax, %gs:{SNAP_RFLAGS}(%edi)
    rdfsbase %rax
    movq %rax, %gs:{SNAP_FSBASE}(%edi)
    rdgsbase %rax
    movq %rax, %gs:{SNAP_GSBASE}(%edi)
""" + "".join(f"    movw %{s}, %gs:{SNAP_SEL + 2 * i}(%edi)\n"
            for i, s in enumerate(_SELECTORS)) + rf"""
    fxsave64 %gs:{SNAP_FXSAVE}(%edi)
    fnstenv %gs:{SNAP_FNSTENV}(%edi)
    xorl %eax, %eax
    ret

    .globl dirty            # dirty(p, other): leave every class of state changed, then
dirty:                      # return (%rsi == 0) or fault (otherwise, after hlt)
    movq %rsi, %r13
    fldl %gs:(%edi)         # x87 with memory operands: FIP, FDP and FOP point here
    fldpi
    faddl %gs:8(%edi)
    movl $0x0c7f, %gs:16(%edi)
    fldcw %gs:16(%edi)      # round toward zero
    movl $0xffc0, %gs:16(%edi)
    ldmxcsr %gs:16(%edi)    # FZ, DAZ, round toward zero
    pcmpeqb %xmm0, %xmm0
""" + "".join(f"    movdqa %xmm0, %xmm{i}\n" for i in range(1, 16)) + r"""
    pushfq
    orq $0x40000, (%rsp)    # AC
    popfq
    std                     # DF
    testq %r13, %r13
    movabsq $0x4141414141414141, %rax
""" + "".join(f"    movq %rax, %{r}\n" for r in ("rbx", "rcx", "rdx", "rbp", "r8", "r9", "r10",
                                                "r11", "r12", "r15")) + r"""
    wrfsbase %rax           # unverified code may move its own FS/GS base...
    jz 1f
    wrgsbase %r13           # ...to another tenant's window
    hlt                     # #GP: the call ends here, with all of the above in the CPU
1:  movq %rax, %r14
    movq %rax, %rsi
    movq %rax, %rdi
    ret

    .globl load64
load64:
    movq %gs:(%edi), %rax
    ret

    .globl touch            # store to each of esi pages from edi (one page fault each)
touch:
1:  movq %rsi, %gs:(%edi)
    addl $4096, %edi
    decl %esi
    jnz 1b
    xorl %eax, %eax
    ret

    .globl ymm
ymm:
    vpcmpeqb %ymm0, %ymm0, %ymm0
    ret

    .globl zmm
zmm:
    vpternlogd $0xff, %zmm0, %zmm0, %zmm0
    ret

    .globl opmask
opmask:
    kxnorw %k0, %k0, %k1
    ret
"""


def _snapshot(sb, p: int) -> dict[str, object]:
    """snapshot() into the buffer at p, decoded."""
    sb.call("snapshot", p)
    raw = sb.memory.read(p, SNAP_SIZE)
    q = struct.unpack_from
    fx = raw[SNAP_FXSAVE:SNAP_FXSAVE + 512]
    return {
        **{r: q("<Q", raw, SNAP_GPRS + 8 * i)[0] for i, r in enumerate(_GPRS)},
        "rflags": q("<Q", raw, SNAP_RFLAGS)[0],
        "fs_base": q("<Q", raw, SNAP_FSBASE)[0], "gs_base": q("<Q", raw, SNAP_GSBASE)[0],
        **{s: q("<H", raw, SNAP_SEL + 2 * i)[0] for i, s in enumerate(_SELECTORS)},
        "fcw": q("<H", fx, 0)[0], "fsw": q("<H", fx, 2)[0], "ftw": fx[4], "fop": q("<H", fx, 6)[0],
        "fip": q("<Q", fx, 8)[0], "fdp": q("<Q", fx, 16)[0], "mxcsr": q("<I", fx, 24)[0],
        "st": fx[32:160], "xmm": fx[160:416],
        "fnstenv": raw[SNAP_FNSTENV:SNAP_FNSTENV + 28],
    }


def _assert_reset_state(s: dict[str, object], sb, p: int) -> None:
    """What a reset CPU holds, apart from the entry's argument p, its stack and base."""
    for r in _GPRS:
        want = {"rdi": p, "r14": sb.base}.get(r, 0)
        if r != "rsp":
            assert s[r] == want, r
    assert s["rflags"] & (1 << 10) == 0, "DF"
    assert s["rflags"] & (1 << 18) == 0, "AC"
    assert s["fs_base"] == 0 and s["gs_base"] == sb.base
    assert (s["fcw"], s["fsw"], s["ftw"], s["fop"], s["fip"], s["fdp"]) == (0x37F, 0, 0, 0, 0, 0)
    assert s["mxcsr"] == 0x1F80
    assert s["st"] == bytes(128) and s["xmm"] == bytes(256)
    env = s["fnstenv"]
    assert struct.unpack_from("<HxxHxxH", env)[0] == 0x37F  # type: ignore[arg-type]
    assert env[12:28] == bytes(16), "FIP, FCS/FOP, FDP, FDS of fnstenv"  # type: ignore[index]


@pytest.fixture(scope="module")
def state_plan():
    return assemble(STATE)


@pytest.mark.parametrize("how", ["returns", "faults"])
def test_a_fresh_entry_sees_no_cpu_state_of_a_previous_tenant(state_plan, how):
    """Finding 3 and its whole class: tenant A leaves every register class changed (x87
    with memory operands: FIP/FDP/FOP; DF, AC; MXCSR; XMM; its FS/GS base moved to B's
    window) and returns or faults; B's next call, and A's own next call, find a reset CPU."""
    with _runtime() as rt:
        img = rt.load_unverified(state_plan)
        a, b = rt.spawn(img), rt.spawn(img)
        snap_a, snap_b = a.alloc(SNAP_SIZE), b.alloc(SNAP_SIZE)
        pristine = _snapshot(b, snap_b)
        _assert_reset_state(pristine, b, snap_b)
        p = a.alloc(64)
        a.memory.write(p, struct.pack("<dd", 1.5, 2.25))
        a.memory.write_u64(p + 32, 0x5EC12E7)
        if how == "returns":
            a.call("dirty", p, 0)
            # A's own next call is clean too, and its %gs reaches its own window again
            _assert_reset_state(_snapshot(a, snap_a), a, snap_a)
            assert a.call("load64", p + 32) == 0x5EC12E7
        else:
            with pytest.raises(SandboxFault) as e:
                a.call("dirty", p, b.base)
            assert e.value.kind == "segv"
            # what the faulting tenant left in the emulated CPU really is dirty
            uc = rt.backend.uc
            assert uc.reg_read(x86.UC_X86_REG_GS_BASE) == b.base
            assert uc.reg_read(x86.UC_X86_REG_FPCW) == 0x0C7F
            assert uc.reg_read(x86.UC_X86_REG_EFLAGS) & (1 << 10)
        assert _snapshot(b, snap_b) == pristine
        # B's run takes page faults one after another as before (no double fault left)
        fresh = b.alloc(16 * 4096)
        assert b.call("touch", fresh, 16) == 0
        assert b.memory.read_u64(fresh + 15 * 4096) == 1


def test_the_fresh_x87_and_sse_state_is_that_of_a_reset_cpu(state_plan):
    """Unicorn's own reset leaves the x87 control word 0 (single precision) and MXCSR 0."""
    with _runtime() as rt:
        sb = rt.spawn(rt.load_unverified(state_plan))
        s = _snapshot(sb, sb.alloc(SNAP_SIZE))
        assert (s["fcw"], s["mxcsr"], s["ftw"]) == (0x37F, 0x1F80, 0)


def test_within_one_call_x87_pointers_are_tracked(state_plan):
    """The emulator does keep FIP/FDP: the clean-entry test above could see a leak."""
    with _runtime() as rt:
        sb = rt.spawn(rt.load_unverified(state_plan))
        p = sb.alloc(64)
        sb.memory.write(p, struct.pack("<dd", 1.5, 2.25))
        sb.call("dirty", p, 0)
        uc = rt.backend.uc
        assert uc.reg_read(x86.UC_X86_REG_FIP) >> 32 == sb.base >> 32
        assert uc.reg_read(x86.UC_X86_REG_FDP) & MASK == (p + 8) & MASK


@pytest.mark.parametrize("func", ["ymm", "zmm"])
def test_there_is_no_avx_state_to_leak(state_plan, func):
    """256-bit VEX and EVEX are #UD in the emulator (and rejected by the verifier)."""
    with _runtime() as rt:
        sb = rt.spawn(rt.load_unverified(state_plan))
        with pytest.raises(SandboxFault) as e:
            sb.call(func)
        assert e.value.kind == "illegal-instruction"


def test_a_fresh_entry_clears_the_emulators_wide_vector_registers(state_plan):
    """No guest instruction reaches the upper halves of YMM/ZMM or ZMM16-31 (there are no
    opmask registers at all: unicorn decodes VEX k-instructions as legacy ones), but they
    are CPU state: put there behind a tenant's back, the next fresh entry does not see
    them."""
    wide = [*((getattr(x86, f"UC_X86_REG_YMM{i}"), 256) for i in range(16)),
            *((getattr(x86, f"UC_X86_REG_ZMM{i}"), 512) for i in range(32))]
    with _runtime() as rt:
        img = rt.load_unverified(state_plan)
        a, b = rt.spawn(img), rt.spawn(img)
        a.call("opmask")
        uc = rt.backend.uc
        for r, bits in wide:
            uc.reg_write(r, (1 << bits) - 1)
        assert all(uc.reg_read(r) == (1 << bits) - 1 for r, bits in wide)
        b.call("main")
        assert [uc.reg_read(r) for r, _ in wide] == [0] * len(wide)
