"""Behaviour of the emulated TME-MK platform: keys, isolation, integrity, cache, relocation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tmebox.tme import (
    MachineCheck,
    PconfigCommand,
    PconfigStatus,
    Platform,
    TmeError,
    TmeTypeError,
    TmeValueError,
)

MIB = 1 << 20


def platform(**kw: object) -> Platform:
    kw.setdefault("memory_size", MIB)
    return Platform(**kw)  # type: ignore[arg-type]


def keyed(p: Platform, *keyids: int) -> Platform:
    for k in keyids:
        assert p.pconfig(k, "set_key_random") == PconfigStatus.PROG_SUCCESS
    return p


# -- addresses ---------------------------------------------------------------------------

def test_address_and_split() -> None:
    p = platform(keyid_bits=6)
    assert p.max_keyid == 63
    assert p.keyid_shift == 40  # 46-bit physical addresses, KeyID in bits 40..45
    pa = p.address(0x1234, 5)
    assert pa == 0x1234 | 5 << 40
    assert p.split(pa) == (0x1234, 5)
    assert p.split(p.address(MIB - 1, 63)) == (MIB - 1, 63)
    p1 = Platform(memory_size=MIB, keyid_bits=1)
    assert p1.max_keyid == 1 and p1.pconfig(1, "set_key_random") == 0
    assert p1.pconfig(2, "set_key_random") == PconfigStatus.INVALID_KEYID
    assert p1.address(0, 1) == 1 << 45
    p15 = Platform(memory_size=MIB, keyid_bits=15)
    assert p15.max_keyid == 32767
    assert p15.split(p15.address(64, 32767)) == (64, 32767)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda p: p.address(MIB, 1), "outside memory"),
        (lambda p: p.address(0, 64), "KeyID 64"),
        (lambda p: p.address(-1, 0), "-0x1"),
        (lambda p: p.split(1 << 46), "46 bits"),
        (lambda p: p.split(MIB), "beyond memory"),
        (lambda p: p.address("0", 0), "str"),
    ],
)
def test_bad_addresses(call, words: str) -> None:
    with pytest.raises(TmeError, match=words):
        call(platform())


def test_memory_must_fit_below_keyid_bits() -> None:
    # 15 KeyID bits leave 31 address bits of a 46-bit physical address: at most 2 GiB.
    with pytest.raises(TmeValueError, match="31 address bits"):
        Platform(memory_size=4 << 30, keyid_bits=15)
    for kw, words in [({"keyid_bits": 0}, "keyid_bits"), ({"keyid_bits": 16}, "keyid_bits"),
                      ({"memory_size": 1000}, "multiple of 4096"),
                      ({"algorithm": "aes-gcm"}, "aes-gcm"), ({"cache_size": 100}, "cache_size")]:
        with pytest.raises(TmeValueError, match=words):
            platform(**kw)


# -- PCONFIG ---------------------------------------------------------------------------------

def test_pconfig_statuses() -> None:
    p = platform(keyid_bits=4)
    assert PconfigStatus.SUCCESS == PconfigStatus.PROG_SUCCESS == 0
    assert [s.value for s in PconfigStatus] == [0, 1, 2, 3, 4, 5]
    assert p.pconfig(1, "set_key_random") == PconfigStatus.PROG_SUCCESS
    assert p.pconfig(15, PconfigCommand.NO_ENCRYPT) == PconfigStatus.PROG_SUCCESS
    assert p.pconfig(0, "set_key_random") == PconfigStatus.INVALID_KEYID  # the TME key
    assert p.pconfig(16, "clear_key") == PconfigStatus.INVALID_KEYID
    assert p.pconfig(-1, "clear_key") == PconfigStatus.INVALID_KEYID
    assert p.pconfig(1, 4) == PconfigStatus.INVALID_PROG_CMD
    assert p.pconfig(1, "set_key_random", algorithm="aes-xts-256") == \
        PconfigStatus.INVALID_ENC_ALG
    assert p.key_kind(1) == "random"
    assert p.key_kind(15) == "no-encrypt"
    assert p.key_kind(2) == "tme"
    assert p.pconfig(1, "CLEAR_KEY") == PconfigStatus.PROG_SUCCESS
    assert p.key_kind(1) == "tme"


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"key": bytes(16)}, TmeValueError, "tweak_key"),
        ({"key": bytes(32), "tweak_key": bytes(32)}, TmeValueError, "16 bytes, got 32"),
        ({"key": "x" * 16, "tweak_key": bytes(16)}, TmeTypeError, "str"),
        ({"key": bytes(16), "tweak_key": [0] * 16}, TmeTypeError, "list"),
    ],
)
def test_set_key_direct_bad_keys(kwargs: dict, exc: type, words: str) -> None:
    p = platform()
    with pytest.raises(exc, match=words):
        p.pconfig(1, "set_key_direct", **kwargs)
    assert p.key_kind(1) == "tme"


def test_pconfig_bad_python_arguments() -> None:
    p = platform()
    with pytest.raises(TmeValueError, match="set_key_sideways"):
        p.pconfig(1, "set_key_sideways")
    with pytest.raises(TmeTypeError, match="float"):
        p.pconfig(1, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TmeTypeError, match="keyid"):
        p.pconfig("1", "clear_key")  # type: ignore[arg-type]
    with pytest.raises(TmeValueError, match="takes no key"):
        p.pconfig(1, "set_key_random", key=bytes(16))
    with pytest.raises(TmeValueError, match="aes-xts-512"):
        p.pconfig(1, "clear_key", algorithm="aes-xts-512")


def test_set_key_direct_is_deterministic_and_256_bit_works() -> None:
    key, tweak = os.urandom(32), os.urandom(32)
    p = platform(algorithm="aes-xts-256", cache=False)
    assert p.pconfig(1, "set_key_direct", key=key, tweak_key=tweak) == 0
    assert p.pconfig(2, "set_key_direct", key=key, tweak_key=tweak) == 0
    p.write(0, b"same key, same plaintext".ljust(64), 1)
    # Same data key and tweak key: KeyIDs are interchangeable (tweak = DRAM address).
    assert p.read(0, 24, 2) == b"same key, same plaintext"
    from tmebox.tme import XtsCipher
    assert p.dram(0, 64) == XtsCipher(key, tweak).encrypt_line(
        b"same key, same plaintext".ljust(64), 0)


# -- isolation -------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("integrity", [False, True])
def test_wrong_keyid_reads_garbage_or_machine_checks(cache: bool, integrity: bool) -> None:
    p = keyed(platform(cache=cache, integrity=integrity), 1, 2)
    secret = b"tenant one's secret".ljust(64, b".")
    p.write(4096, secret, 1)
    p.wbinvd()
    assert secret not in p.dram(0, 8192)  # DRAM holds ciphertext only
    if integrity:
        with pytest.raises(MachineCheck) as info:
            p.read(4096, 64, 2)
        assert (info.value.offset, info.value.keyid) == (4096, 2)
        assert p.stats.machine_checks == 1
    else:
        garbage = p.read(4096, 64, 2)
        assert garbage != secret and b"secret" not in garbage
    p.clflush(4096, 2)
    if not integrity:
        assert p.read(4096, 64, 1) == secret


def test_keyid0_and_unprogrammed_keyids_share_the_tme_key() -> None:
    p = platform(cache=False)
    p.write(0, b"A" * 64, 0)
    assert p.read(0, 64, 7) == b"A" * 64  # KeyID 7 never programmed: TME key
    assert p.dram(0, 64) != b"A" * 64


def test_no_encrypt_stores_plaintext() -> None:
    p = platform(cache=False)
    assert p.pconfig(3, "no_encrypt") == 0
    p.write(128, b"in the clear", 3)
    assert p.dram(128, 12) == b"in the clear"


def test_integrity_poisons_until_fully_rewritten() -> None:
    p = keyed(platform(integrity=True), 1, 2)
    p.write(0, b"x" * 128, 1)
    p.wbinvd()
    with pytest.raises(MachineCheck, match="MAC"):
        p.read(10, 4, 2)
    assert p.is_poisoned(0) and not p.is_poisoned(64)
    # Poisoned for every KeyID now, the owner included.
    with pytest.raises(MachineCheck, match="poisoned"):
        p.read(0, 64, 1)
    assert p.read(64, 64, 1) == b"x" * 64
    # A partial write cannot clear poison: it needs the old line, which is poisoned.
    p.write(0, b"yy", 1)
    assert p.stats.writes_dropped == 1
    p.wbinvd()
    with pytest.raises(MachineCheck):
        p.read(0, 2, 1)
    # A full-line write does, once it reaches DRAM.
    p.write(0, b"z" * 64, 1)
    p.wbinvd()
    assert not p.is_poisoned(0)
    assert p.read(0, 64, 1) == b"z" * 64
    assert p.stats.machine_checks == 3


def test_partial_write_through_wrong_key_poisons() -> None:
    p = keyed(platform(integrity=True, cache=False), 1, 2)
    p.write(256, b"q" * 64, 1)
    p.write(260, b"evil", 2)  # wrong key: the read-modify-write fill fails
    assert p.is_poisoned(256)
    with pytest.raises(MachineCheck):
        p.read(256, 64, 1)
    assert p.stats.machine_checks == 1  # the store itself raised nothing


def test_integrity_unwritten_memory_must_be_initialised() -> None:
    p = platform(integrity=True)
    with pytest.raises(MachineCheck):
        p.read(0, 1, 0)
    p.write_lines(4096, bytes(4096), 0)
    assert p.read(4096, 4096, 0) == bytes(4096)


@pytest.mark.parametrize("integrity", [False, True])
def test_physical_attacker_cannot_splice_or_flip_ciphertext(integrity: bool) -> None:
    """Ciphertext is bound to its address (tweak, MAC) and key: moving or editing it in DRAM
    never yields chosen plaintext, and with integrity it machine-checks."""
    p = keyed(platform(integrity=integrity, cache=False), 1, 2)
    secret, other = b"K" * 64, b"m" * 64
    p.write(0, secret, 1)
    p.write(4096, other, 1)
    p.write(8192, b"2" * 64, 2)
    splices = [
        (4096, p.dram(0, 64), 1),  # replay tenant 1's line at another address, same key
        (8192, p.dram(0, 64), 2),  # into tenant 2's memory
    ]
    for offset, ciphertext, keyid in splices:
        p.dram_write(offset, ciphertext)
        if integrity:
            with pytest.raises(MachineCheck):
                p.read(offset, 64, keyid)
        else:
            got = p.read(offset, 64, keyid)
            assert got not in (secret, other) and b"KKKK" not in got
    # Flip one bit of the first 16-byte block. XTS is a narrow-block mode, as on hardware:
    # without integrity only that block turns to noise, the other three still decrypt.
    p.dram_write(0, bytes([p.dram(0, 1)[0] ^ 1]))
    if integrity:
        with pytest.raises(MachineCheck):
            p.read(0, 64, 1)
    else:
        got = p.read(0, 64, 1)
        assert got[:16] != secret[:16]
        assert got[16:] == secret[16:]
    with pytest.raises(TmeValueError, match="outside memory"):
        p.dram_write(MIB - 1, b"xx")


# -- the cache -------------------------------------------------------------------------------

def test_writes_stay_in_cache_until_written_back() -> None:
    p = keyed(platform(), 1)
    before = p.dram(0, 64)
    p.write(0, b"cached", 1)
    assert p.dram(0, 64) == before and p.is_cached(0, 1)
    p.clflush(0, 1)
    assert not p.is_cached(0, 1)
    assert p.dram(0, 64) != before
    assert p.read(0, 6, 1) == b"cached"


def test_stale_alias_hazard_without_flush() -> None:
    """The cache is not coherent across KeyIDs: relocation must clflush the old alias."""
    old_data, new_data = b"O" * 64, b"N" * 64
    p = keyed(platform(), 1, 2)
    p.write(0, old_data, 1)  # dirty under alias 1
    # Hand the line to KeyID 2 WITHOUT flushing alias 1 first.
    p.write(0, new_data, 2)
    p.clflush(0, 2)  # tenant 2's data reaches DRAM...
    assert p.read(0, 64, 2) == new_data
    p.clflush(0, 2)
    p.wbinvd()  # ...but the stale dirty alias-1 line is written back after it
    assert p.read(0, 64, 2) != new_data  # tenant 2's data is destroyed

    # Stale reads too: a clean copy under the old alias survives the relocation.
    p = keyed(platform(), 1, 2)
    p.write(0, old_data, 1)
    p.clflush(0, 1)
    assert p.read(0, 64, 1) == old_data  # now cached clean under alias 1
    p.write_lines(0, new_data, 2)
    assert p.read(0, 64, 1) == old_data  # stale: DRAM no longer holds this


def test_flush_then_relocate_is_correct() -> None:
    old_data, new_data = b"O" * 64, b"N" * 64
    p = keyed(platform(), 1, 2)
    p.write(0, old_data, 1)
    p.clflush(0, 1)
    p.write(0, new_data, 2)
    p.wbinvd()
    assert p.read(0, 64, 2) == new_data
    assert p.read(0, 64, 1) != old_data


def test_eviction_writes_back_dirty_lines() -> None:
    p = keyed(platform(cache_size=4 * 64), 1)
    for i in range(4):
        p.write(i * 64, bytes([i + 1]) * 64, 1)
    assert p.stats.cache_writebacks == 0
    p.write(4 * 64, b"\x05" * 64, 1)  # evicts line 0 (least recently used)
    assert p.stats.cache_evictions == 1 and p.stats.cache_writebacks == 1
    assert not p.is_cached(0, 1)
    assert p.read(0, 64, 1) == b"\x01" * 64  # refilled from DRAM
    p.read(64, 1, 1)  # touch line 1: line 2 is now least recently used
    p.write(5 * 64, b"\x06" * 64, 1)
    p.write(6 * 64, b"\x07" * 64, 1)
    assert p.is_cached(64, 1) and not p.is_cached(128, 1)
    for i in range(7):
        assert p.read(i * 64, 64, 1) == bytes([i + 1]) * 64


def test_cache_hits_and_misses_are_counted() -> None:
    p = platform()
    p.write_lines(0, bytes(256), 0)
    p.stats.reset()
    p.read(0, 256, 0)
    assert (p.stats.cache_misses, p.stats.cache_hits, p.stats.lines_decrypted) == (4, 0, 4)
    p.read(0, 256, 0)
    p.read(3, 5, 0)
    assert (p.stats.cache_misses, p.stats.cache_hits, p.stats.lines_decrypted) == (4, 5, 4)
    assert p.stats.as_dict()["cache_hits"] == 5


# -- pconfig and the cache: cryptographic erase ----------------------------------------------

@pytest.mark.parametrize("command", ["clear_key", "set_key_random"])
def test_cryptographic_erase(command: str) -> None:
    p = keyed(platform(), 1)
    p.write(0, b"s" * 4096, 1)
    p.wbinvd()  # software flushes before PCONFIG, as the spec requires
    assert p.pconfig(1, command) == 0
    after = p.read(0, 4096, 1)
    assert after != b"s" * 4096 and b"ssss" not in after
    assert p.read(0, 4096, 0) != b"s" * 4096


def test_pconfig_without_flush_leaks_cached_plaintext() -> None:
    """PCONFIG does not flush: dirty lines are written back under the NEW key."""
    p = keyed(platform(), 1)
    p.write(0, b"s" * 64, 1)  # still dirty in the cache
    assert p.pconfig(1, "set_key_random") == 0
    p.wbinvd()
    assert p.read(0, 64, 1) == b"s" * 64  # the erase failed: software skipped the flush


# -- relocation --------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("integrity", [False, True])
def test_rekey_moves_lines(cache: bool, integrity: bool) -> None:
    p = keyed(platform(cache=cache, integrity=integrity), 1, 2, 3)
    data = os.urandom(8192)
    p.write(4096, data, 1)  # dirty in cache (if on): rekey must pick it up
    if not integrity:
        p.read(4096, 64, 2)  # a stale clean copy under the new alias: rekey must drop it
    p.rekey(4096, 8192, 1, 2)
    assert p.read(4096, 8192, 2) == data
    p.wbinvd()
    assert p.read(4096, 8192, 2) == data
    for other in (1, 3):
        if integrity:
            with pytest.raises(MachineCheck):
                p.read(4096 + 64 * other, 64, other)
        else:
            assert p.read(4096, 8192, other) != data


def test_rekey_checks_before_writing() -> None:
    p = keyed(platform(integrity=True), 1, 2)
    p.write_lines(0, b"a" * 128, 1)
    p.write_lines(128, b"b" * 64, 2)  # not KeyID 1's line
    with pytest.raises(MachineCheck):
        p.rekey(0, 192, 1, 2)
    p.stats.machine_checks = 0
    assert p.read(0, 128, 1) == b"a" * 128  # untouched
    with pytest.raises(TmeValueError, match="aligned"):
        p.rekey(0, 100, 1, 2)


# -- bulk interface ----------------------------------------------------------------------------

def test_bulk_lines_roundtrip_and_coherence_with_same_alias() -> None:
    p = keyed(platform(), 1)
    data = os.urandom(16384)
    p.write_lines(8192, data, 1)
    assert p.read_lines(8192, 256, 1) == data
    assert p.read(8192 + 100, 1000, 1) == data[100:1100]
    p.write(8192 + 64, b"dirty", 1)  # cached dirty under alias 1
    got = p.read_lines(8192, 256, 1)
    assert got[64:69] == b"dirty" and got[69:] == data[69:]
    p.write_lines(8192, bytes(128), 1)  # invalidates the same alias's copies
    assert not p.is_cached(8192 + 64, 1)
    assert p.read(8192, 128, 1) == bytes(128)
    assert p.read_lines(0, 0, 1) == b""


def test_page_mask_cache_never_serves_an_old_key() -> None:
    from tmebox.tme import XtsCipher
    from tmebox.tme.platform import _MASK_CACHE_PAGES
    p = platform(memory_size=(_MASK_CACHE_PAGES + 8) * 4096)
    page = os.urandom(4096)
    seqs = [0x1000 + 64 * i for i in range(64)]
    for _ in range(2):  # the second key must not reuse the first key's cached masks
        key, tweak = os.urandom(16), os.urandom(16)
        assert p.pconfig(1, "set_key_direct", key=key, tweak_key=tweak) == 0
        p.write_lines(0x1000, page, 1)
        assert p.dram(0x1000, 4096) == XtsCipher(key, tweak).encrypt_units(page, seqs)
        assert p.read_lines(0x1000, 64, 1) == page
    # Three pages where only the middle one has cached masks: order must be kept.
    three = os.urandom(3 * 4096)
    p.write_lines(0, three, 1)
    assert p.dram(0, 3 * 4096) == XtsCipher(key, tweak).encrypt_units(
        three, [64 * i for i in range(192)])
    assert p.read_lines(0, 192, 1) == three
    for i in range(_MASK_CACHE_PAGES + 8):  # the cache stays bounded
        p.read_lines(i * 4096, 64, 1)
    assert len(p._page_masks) == _MASK_CACHE_PAGES


@pytest.mark.parametrize("integrity", [False, True])
def test_scattered_lines_roundtrip(integrity: bool) -> None:
    import random
    rnd = random.Random(5)
    p = keyed(platform(integrity=integrity), 1)
    p.write_lines(0, bytes(MIB), 1)
    offsets = rnd.sample(range(0, MIB, 64), 300)
    data = os.urandom(300 * 64)
    p.write_lines_at(offsets, data, 1)
    for k in (0, 7, 299):
        assert p.read(offsets[k], 64, 1) == data[64 * k:64 * k + 64]
    p.write(offsets[3] + 5, b"cached", 1)  # dirty under the same alias: must be used
    got = p.read_lines_at(offsets, 1)
    want = bytearray(data)
    want[3 * 64 + 5:3 * 64 + 11] = b"cached"
    assert got == want
    assert p.read_lines_at([], 1) == b""
    assert p.read_lines_at(np.array(offsets[:2]), 1) == data[:128]
    p.write_lines_at(offsets[3:4], bytes(64), 1)  # invalidates the dirty copy
    assert not p.is_cached(offsets[3], 1)
    assert p.read(offsets[3], 64, 1) == bytes(64)


def test_scattered_lines_bad_input_changes_nothing() -> None:
    p = keyed(platform(), 1)
    p.write(0, b"x" * 200, 1)
    before = _state(p)
    for call, exc, words in [
        (lambda: p.write_lines_at([0, 64], bytes(64), 1), TmeValueError, "expected 2 lines"),
        (lambda: p.write_lines_at([0, 0], bytes(128), 1), TmeValueError, "more than once"),
        (lambda: p.write_lines_at([64, 96], bytes(128), 1), TmeValueError, "0x60"),
        (lambda: p.write_lines_at([0, MIB], bytes(128), 1), TmeValueError, "0x100000"),
        (lambda: p.write_lines_at([-64], bytes(64), 1), TmeValueError, "-0x40"),
        (lambda: p.write_lines_at([0.0], bytes(64), 1), TmeTypeError, "float"),
        (lambda: p.write_lines_at(5, bytes(64), 1), TmeTypeError, "int"),
        (lambda: p.read_lines_at([[0]], 1), TmeTypeError, "shape"),
        (lambda: p.read_lines_at([0], 64), TmeValueError, "KeyID 64"),
    ]:
        with pytest.raises(exc, match=words):
            call()
        assert _state(p) == before, words


def test_bulk_bad_arguments() -> None:
    p = platform()
    for call, words in [
        (lambda: p.read_lines(32, 1, 0), "aligned"),
        (lambda: p.read_lines(0, -1, 0), "nlines -1"),
        (lambda: p.write_lines(0, bytes(65), 0), "aligned"),
        (lambda: p.write_lines(MIB, bytes(64), 0), "outside memory"),
        (lambda: p.read_lines(0, 1, 99), "KeyID 99"),
    ]:
        with pytest.raises(TmeValueError, match=words):
            call()


# -- bad input changes nothing ---------------------------------------------------------------

def _state(p: Platform) -> tuple:
    return (p.dram(0, p.memory_size), dict(p._cache), set(p._dirty), p.stats.as_dict())


@pytest.mark.parametrize("cache", [True, False])
def test_bad_input_raises_and_changes_nothing(cache: bool) -> None:
    p = keyed(platform(cache=cache), 1)
    p.write(0, os.urandom(3000), 1)
    p.write(5000, b"dirty", 0)
    before = _state(p)
    bad = [
        (lambda: p.write(MIB - 10, bytes(11), 1), TmeValueError, "outside memory"),
        (lambda: p.write(-1, b"x", 1), TmeValueError, "-0x1"),
        (lambda: p.write(0, b"x", 64), TmeValueError, "KeyID 64"),
        (lambda: p.write(0, b"x", -1), TmeValueError, "KeyID -1"),
        (lambda: p.write(0, "text", 1), TmeTypeError, "str"),
        (lambda: p.write(0.0, b"x", 1), TmeTypeError, "float"),
        (lambda: p.write(True, b"x", 1), TmeTypeError, "bool"),
        (lambda: p.read(0, -5, 1), TmeValueError, "length -5"),
        (lambda: p.read(MIB, 1, 1), TmeValueError, "outside memory"),
        (lambda: p.read(0, 1, 1 << 20), TmeValueError, "KeyID 1048576"),
        (lambda: p.clflush(MIB, 1), TmeValueError, "outside memory"),
        (lambda: p.clflush_range(0, MIB + 1, 1), TmeValueError, "outside memory"),
        (lambda: p.rekey(0, 64, 1, 64), TmeValueError, "KeyID 64"),
        (lambda: p.rekey(MIB - 64, 128, 1, 2), TmeValueError, "outside memory"),
        (lambda: p.dram(MIB - 1, 2), TmeValueError, "outside memory"),
    ]
    for call, exc, words in bad:
        with pytest.raises(exc, match=words):
            call()
        assert _state(p) == before, words


@pytest.mark.parametrize("cache", [True, False])
def test_empty_accesses_touch_nothing(cache: bool) -> None:
    p = platform(cache=cache)
    before = _state(p)
    for offset in (0, 100, MIB):
        assert p.read(offset, 0, 1) == b""
        p.write(offset, b"", 1)
        p.clflush_range(offset, 0, 1)
        p.rekey(offset - offset % 64, 0, 1, 2)
    assert p.read_lines(MIB, 0, 1) == b""
    p.write_lines(MIB, b"", 1)
    assert _state(p) == before
    assert len(p.dram(0, MIB)) == MIB


def test_numpy_integers_are_accepted() -> None:
    p = platform()
    p.write(np.int64(64), b"np", np.uint8(0))
    assert p.read(np.uint32(64), np.int16(2), 0) == b"np"


def test_clflush_range_writes_back_only_that_alias() -> None:
    p = keyed(platform(), 1, 2)
    p.write(0, b"1" * 4096, 1)
    p.write(0, b"2" * 64, 2)
    p.clflush_range(0, 4096, 1)
    assert not any(p.is_cached(o, 1) for o in range(0, 4096, 64))
    assert p.is_cached(0, 2)
    assert p.read(0, 4096, 1) == b"1" * 4096
