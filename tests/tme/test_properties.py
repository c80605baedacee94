"""Property tests: the platform behaves like plain memory for a tenant that uses one alias
per line and relocates with rekey, whatever the cache does."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tmebox.tme import PAGE_SIZE, Platform

MEM = 4 * PAGE_SIZE
PLATFORMS = {
    (cache, integrity): Platform(memory_size=MEM, cache=cache, integrity=integrity,
                                 cache_size=16 * 64)
    for cache in (True, False) for integrity in (False, True)
}


def _offsets() -> st.SearchStrategy[int]:
    # Half the offsets sit within 100 bytes of a page boundary, so accesses straddle pages.
    near_page = st.builds(lambda page, d: max(0, page * PAGE_SIZE + d),
                          st.integers(1, 3), st.integers(-100, 100))
    return st.one_of(st.integers(0, MEM - 1), near_page)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cache=st.booleans(), integrity=st.booleans(), keyid=st.integers(0, 63),
       writes=st.lists(st.tuples(_offsets(), st.binary(min_size=0, max_size=700)), min_size=1,
                       max_size=8))
def test_read_after_write(cache: bool, integrity: bool, keyid: int,
                          writes: list[tuple[int, bytes]]) -> None:
    p = PLATFORMS[(cache, integrity)]
    if keyid:
        assert p.pconfig(keyid, "set_key_random") == 0
    p.write_lines(0, bytes(MEM), keyid)  # initialise (needed with integrity)
    model = bytearray(MEM)
    for offset, data in writes:
        data = data[:MEM - offset]
        p.write(offset, data, keyid)
        model[offset:offset + len(data)] = data
        assert p.read(offset, len(data), keyid) == data
    for offset, _ in writes:
        assert p.read(offset, min(300, MEM - offset), keyid) == model[offset:offset + 300]
    p.wbinvd()
    assert p.read_lines(0, MEM // 64, keyid) == model


class AliasDiscipline(RuleBasedStateMachine):
    """Lines owned by different KeyIDs, handed over with rekey, with evictions and flushes
    at random: every owner always reads back exactly what it wrote."""

    keyids = (0, 1, 2, 3)
    span = 1024  # 16 lines against an 8-line cache: frequent evictions and alias collisions

    @initialize(cache=st.booleans(), integrity=st.booleans())
    def setup(self, cache: bool, integrity: bool) -> None:
        self.p = Platform(memory_size=PAGE_SIZE, cache=cache, integrity=integrity,
                          cache_size=8 * 64)
        for k in self.keyids[1:]:
            assert self.p.pconfig(k, "set_key_random") == 0
        self.p.write_lines(0, bytes(self.span), 0)
        self.model = bytearray(self.span)
        self.owner = [0] * (self.span // 64)  # KeyID of each line

    def _run(self, offset: int, n: int) -> tuple[int, int]:
        """Clip [offset, offset+n) to the run of lines sharing the first line's owner."""
        n = min(n, self.span - offset)
        line = offset // 64
        end = line
        while end < len(self.owner) and self.owner[end] == self.owner[line] \
                and end * 64 < offset + n:
            end += 1
        return self.owner[line], min(n, end * 64 - offset)

    @rule(offset=st.integers(0, span - 1), data=st.binary(min_size=1, max_size=300))
    def write(self, offset: int, data: bytes) -> None:
        keyid, n = self._run(offset, len(data))
        self.p.write(offset, data[:n], keyid)
        self.model[offset:offset + n] = data[:n]

    @rule(offset=st.integers(0, span - 1), n=st.integers(0, 300))
    def read(self, offset: int, n: int) -> None:
        keyid, n = self._run(offset, n)
        assert self.p.read(offset, n, keyid) == self.model[offset:offset + n]

    @rule(line=st.integers(0, span // 64 - 1), count=st.integers(1, 8), to=st.sampled_from(keyids))
    def rekey(self, line: int, count: int, to: int) -> None:
        keyid, n = self._run(line * 64, count * 64)
        self.p.rekey(line * 64, n, keyid, to)
        for i in range(line, line + n // 64):
            self.owner[i] = to

    @rule(lines=st.lists(st.integers(0, span // 64 - 1), min_size=1, max_size=6, unique=True),
          data=st.binary(min_size=6 * 64, max_size=6 * 64))
    def write_scattered(self, lines: list[int], data: bytes) -> None:
        keyid = self.owner[lines[0]]
        lines = [line for line in lines if self.owner[line] == keyid]
        self.p.write_lines_at([line * 64 for line in lines], data[:64 * len(lines)], keyid)
        for i, line in enumerate(lines):
            self.model[line * 64:line * 64 + 64] = data[64 * i:64 * i + 64]

    @rule(lines=st.lists(st.integers(0, span // 64 - 1), min_size=1, max_size=6, unique=True))
    def read_scattered(self, lines: list[int]) -> None:
        keyid = self.owner[lines[0]]
        lines = [line for line in lines if self.owner[line] == keyid]
        want = b"".join(self.model[line * 64:line * 64 + 64] for line in lines)
        assert self.p.read_lines_at([line * 64 for line in lines], keyid) == want

    @rule(offset=st.integers(0, span - 1), keyid=st.sampled_from(keyids))
    def clflush(self, offset: int, keyid: int) -> None:
        self.p.clflush(offset, keyid)

    @rule()
    def wbinvd(self) -> None:
        self.p.wbinvd()

    @invariant()
    def no_machine_checks(self) -> None:
        if hasattr(self, "p"):
            assert self.p.stats.machine_checks == 0


AliasDiscipline.TestCase.settings = settings(max_examples=60, stateful_step_count=50,
                                             deadline=None)
test_alias_discipline = AliasDiscipline.TestCase


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, MEM - 1), st.binary(min_size=1, max_size=300)),
                    min_size=1, max_size=12),
       integrity=st.booleans())
def test_cache_is_invisible_in_dram_after_wbinvd(ops: list[tuple[int, bytes]],
                                                 integrity: bool) -> None:
    """With fixed keys and one owner per line, DRAM after WBINVD is the same byte for byte
    whether the cache was on (tiny, evicting) or off."""
    dram = []
    for cache in (True, False):
        p = Platform(memory_size=MEM, cache=cache, integrity=integrity, cache_size=4 * 64)
        for k in (1, 2):
            assert p.pconfig(k, "set_key_direct", key=bytes([k]) * 16,
                             tweak_key=bytes([k + 16]) * 16) == 0
        half = MEM // 2
        p.write_lines(0, bytes(half), 1)  # KeyID 1 owns the first half, 2 the second
        p.write_lines(half, bytes(half), 2)
        for offset, data in ops:
            keyid = 1 if offset < half else 2
            data = data[:(half if keyid == 1 else MEM) - offset]
            p.write(offset, data, keyid)
        p.wbinvd()
        dram.append(p.dram(0, MEM))
    assert dram[0] == dram[1]
