"""Adversarial: on the tme backend tenants share one pool, and the keys keep them apart.

Every tenant can form every pool offset (its window aliases the whole pool), so these
tests attack for real: read a neighbour's secret at its exact offset, overwrite it,
jump into its code, inspect the raw pool as the host, and reuse a dead tenant's KeyID.
"""

from __future__ import annotations

import random

import pytest
from asm_image import assemble
from programs import BASIC

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
