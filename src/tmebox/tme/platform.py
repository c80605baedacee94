"""The emulated TME-MK platform: KeyID-tagged physical memory behind a write-back cache.

See docs/tme.md for what is modelled faithfully and what is simplified.
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

from tmebox.tme.errors import MachineCheck, TmeTypeError, TmeValueError
from tmebox.tme.keys import (
    ALGORITHMS,
    KeyEntry,
    KeyKind,
    PconfigCommand,
    PconfigStatus,
    make_entry,
)
from tmebox.tme.xts import XtsCipher

LINE_SIZE = 64
LINE_SHIFT = 6
PAGE_SIZE = 4096
DEFAULT_PHYSICAL_ADDRESS_BITS = 46
DEFAULT_CACHE_SIZE = 8 << 20
MAX_KEYID_BITS = 15
# Bulk transfers go through the engine 1 MiB at a time: bigger batches are slower (fresh
# buffers page-fault), smaller ones pay more numpy call overhead (bench/tme_platform_speed.py).
_BULK_LINES = 16384
# Tweak masks of whole pages are kept (LRU, keyed by cipher serial and page): a page
# en/decrypted again costs ~4 us instead of ~22 us. Only for requests of a few pages; bigger
# batches amortise the computation anyway.
_MASK_CACHE_PAGES = 4096  # 16 MiB of masks
_MASK_CACHE_MAX_PAGES_PER_CALL = 16
_LINES_PER_PAGE = PAGE_SIZE // LINE_SIZE
_U64 = np.dtype("<u8")

_COMMANDS = {c.name.lower(): c for c in PconfigCommand}


@dataclass
class TmeStats:
    """Counters of what the memory side did (live: read them from `Platform.stats`)."""

    lines_encrypted: int = 0
    lines_decrypted: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_writebacks: int = 0
    machine_checks: int = 0
    lines_poisoned: int = 0
    writes_dropped: int = 0  # partial writes whose fill hit a bad MAC (line poisoned instead)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _BadLine(Exception):
    """Internal: a line failed its integrity check or is poisoned."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TmeTypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    return operator.index(value)


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TmeTypeError(f"data must be bytes-like, not {type(data).__name__}")


class Platform:
    """Physical memory of `memory_size` bytes seen through 2**keyid_bits KeyID aliases.

    A physical address is `offset | keyid << (physical_address_bits - keyid_bits)`: the
    KeyID takes the top bits of the physical address, as on real parts.

    memory_size: bytes of DRAM, a multiple of 4096. keyid_bits: 1..15. algorithm: the one
    algorithm activated for PCONFIG ("aes-xts-128" or "aes-xts-256"). integrity: keep a MAC
    per line and raise MachineCheck on a mismatch. cache: put the write-back cache in front
    of DRAM; cache_size its capacity in bytes.

    Not thread-safe: one thread at a time.
    """

    def __init__(self, memory_size: int = 64 << 20, keyid_bits: int = 6,
                 algorithm: str = "aes-xts-128", integrity: bool = False, cache: bool = True,
                 cache_size: int = DEFAULT_CACHE_SIZE,
                 physical_address_bits: int = DEFAULT_PHYSICAL_ADDRESS_BITS) -> None:
        memory_size = _int("memory_size", memory_size)
        keyid_bits = _int("keyid_bits", keyid_bits)
        cache_size = _int("cache_size", cache_size)
        physical_address_bits = _int("physical_address_bits", physical_address_bits)
        if not 1 <= keyid_bits <= MAX_KEYID_BITS:
            raise TmeValueError(f"keyid_bits must be 1..{MAX_KEYID_BITS}, got {keyid_bits}")
        if not 36 <= physical_address_bits <= 52:
            raise TmeValueError(
                "physical_address_bits must be 36..52 (x86 MAXPHYADDR), "
                f"got {physical_address_bits}"
            )
        offset_bits = physical_address_bits - keyid_bits
        if memory_size <= 0 or memory_size % PAGE_SIZE:
            raise TmeValueError(
                f"memory_size must be a positive multiple of {PAGE_SIZE}, got {memory_size:#x}"
            )
        if memory_size > 1 << offset_bits:
            raise TmeValueError(
                f"memory_size {memory_size:#x} does not fit the {offset_bits} address bits left "
                f"below {keyid_bits} KeyID bits of a {physical_address_bits}-bit physical address"
            )
        if algorithm not in ALGORITHMS:
            raise TmeValueError(
                f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}"
            )
        if cache_size < LINE_SIZE or cache_size % LINE_SIZE:
            raise TmeValueError(f"cache_size must be a positive multiple of 64, got {cache_size}")
        if not isinstance(integrity, bool) or not isinstance(cache, bool):
            raise TmeTypeError("integrity and cache must be bool")

        self.memory_size = memory_size
        self.keyid_bits = keyid_bits
        self.max_keyid = (1 << keyid_bits) - 1
        self.physical_address_bits = physical_address_bits
        self.keyid_shift = offset_bits
        self.algorithm = algorithm
        self.integrity = integrity
        self.cache_enabled = cache
        self.cache_lines = cache_size // LINE_SIZE
        self.stats = TmeStats()

        self._nlines = memory_size >> LINE_SHIFT
        self._tag_shift = offset_bits - LINE_SHIFT  # cache tag = physical address >> 6
        self._line_mask = (1 << self._tag_shift) - 1
        # DRAM starts zeroed, as after a power-on memory clear; nothing was written through a
        # key, so with integrity a line must be written before it can be read.
        self._dram = bytearray(memory_size)
        self._dram_lines = np.frombuffer(self._dram, dtype=np.uint8).reshape(-1, LINE_SIZE)
        self._macs = np.zeros(self._nlines, dtype=_U64) if integrity else None
        self._poisoned: set[int] = set()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._page_masks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._dirty: set[int] = set()

        self._secret = os.urandom(32)
        key_size = ALGORITHMS[algorithm][1]
        self._tme_entry = make_entry(KeyKind.TME, algorithm, os.urandom(key_size),
                                     os.urandom(key_size), self._secret)
        self._plain_entry = make_entry(KeyKind.NO_ENCRYPT, None, b"", b"", self._secret)
        # Until programmed, every KeyID uses the platform TME key (as after CLEAR_KEY).
        self._keys: list[KeyEntry] = [self._tme_entry] * (self.max_keyid + 1)

    # -- addresses --------------------------------------------------------------------------

    def address(self, offset: int, keyid: int = 0) -> int:
        """Physical address of DRAM `offset` seen through `keyid`."""
        offset = _int("offset", offset)
        keyid = self._keyid(keyid)
        if not 0 <= offset < self.memory_size:
            raise TmeValueError(f"offset {offset:#x} is outside memory [0, {self.memory_size:#x})")
        return offset | keyid << self.keyid_shift

    def split(self, physical_address: int) -> tuple[int, int]:
        """(offset, keyid) of a physical address."""
        pa = _int("physical address", physical_address)
        if not 0 <= pa < 1 << self.physical_address_bits:
            raise TmeValueError(
                f"physical address {pa:#x} exceeds {self.physical_address_bits} bits"
            )
        offset, keyid = pa & ((1 << self.keyid_shift) - 1), pa >> self.keyid_shift
        if offset >= self.memory_size:
            raise TmeValueError(
                f"physical address {pa:#x}: offset {offset:#x} is beyond memory "
                f"({self.memory_size:#x} bytes)"
            )
        return offset, keyid

    # -- key programming --------------------------------------------------------------------

    def pconfig(self, keyid: int, command: str | int, key: bytes | None = None,
                tweak_key: bytes | None = None, algorithm: str | None = None) -> PconfigStatus:
        """PCONFIG(MKTME_KEY_PROGRAM). Returns the architectural status; never flushes caches.

        As on hardware, software must write back and invalidate the KeyID's cached lines
        (clflush/wbinvd) before reprogramming it: dirty lines still cached are encrypted
        with whatever key the KeyID has when they are finally written back.
        """
        cmd = self._command(command)
        alg = self.algorithm if algorithm is None else algorithm
        if alg not in ALGORITHMS:
            raise TmeValueError(
                f"unknown algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}"
            )
        if isinstance(keyid, bool) or not isinstance(keyid, int):
            raise TmeTypeError(f"keyid must be an int, not {type(keyid).__name__}")
        key_size = ALGORITHMS[alg][1]
        if cmd is PconfigCommand.SET_KEY_DIRECT:
            key = self._key_arg("key", key, key_size, alg)
            tweak_key = self._key_arg("tweak_key", tweak_key, key_size, alg)
        elif key is not None or tweak_key is not None:
            raise TmeValueError(f"PCONFIG command {command!r} takes no key or tweak_key")
        if cmd is None:
            return PconfigStatus.INVALID_PROG_CMD
        if not 1 <= keyid <= self.max_keyid:
            return PconfigStatus.INVALID_KEYID
        if alg != self.algorithm:
            return PconfigStatus.INVALID_ENC_ALG
        if cmd is PconfigCommand.SET_KEY_DIRECT:
            assert key is not None and tweak_key is not None
            entry = make_entry(KeyKind.DIRECT, alg, key, tweak_key, self._secret)
        elif cmd is PconfigCommand.SET_KEY_RANDOM:
            entry = make_entry(KeyKind.RANDOM, alg, os.urandom(key_size), os.urandom(key_size),
                               self._secret)
        elif cmd is PconfigCommand.CLEAR_KEY:
            entry = self._tme_entry
        else:
            entry = self._plain_entry
        self._keys[keyid] = entry
        return PconfigStatus.PROG_SUCCESS

    def key_kind(self, keyid: int) -> str:
        """What KeyID `keyid` currently encrypts with: tme, direct, random or no-encrypt."""
        return self._keys[self._keyid(keyid)].kind.value

    @staticmethod
    def _command(command: str | int) -> PconfigCommand | None:
        if isinstance(command, str):
            try:
                return _COMMANDS[command.lower()]
            except KeyError:
                raise TmeValueError(
                    f"unknown PCONFIG command {command!r}; choose one of {', '.join(_COMMANDS)}"
                ) from None
        if isinstance(command, int) and not isinstance(command, bool):
            # An unknown command number is architecturally a status, not a fault.
            try:
                return PconfigCommand(command)
            except ValueError:
                return None
        raise TmeTypeError(f"command must be a str or int, not {type(command).__name__}")

    @staticmethod
    def _key_arg(name: str, value: object, size: int, alg: str) -> bytes:
        if value is None:
            raise TmeValueError(f"PCONFIG SET_KEY_DIRECT needs {name}")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TmeTypeError(f"{name} must be bytes, not {type(value).__name__}")
        value = bytes(value)
        if len(value) != size:
            raise TmeValueError(f"{name} for {alg} must be {size} bytes, got {len(value)}")
        return value

    # -- argument checks --------------------------------------------------------------------

    def _keyid(self, keyid: object) -> int:
        k = _int("keyid", keyid)
        if not 0 <= k <= self.max_keyid:
            raise TmeValueError(
                f"KeyID {k} is outside 0..{self.max_keyid} ({self.keyid_bits} KeyID bits)"
            )
        return k

    def _range(self, offset: object, n: object) -> tuple[int, int]:
        offset = _int("offset", offset)
        n = _int("length", n)
        if n < 0:
            raise TmeValueError(f"length {n} is negative")
        if offset < 0 or offset + n > self.memory_size:
            raise TmeValueError(
                f"range [{offset:#x}, {offset + n:#x}) lies outside memory "
                f"[0, {self.memory_size:#x})"
            )
        return offset, n

    def _line_range(self, offset: object, n: object) -> tuple[int, int]:
        offset, n = self._range(offset, n)
        if offset % LINE_SIZE or n % LINE_SIZE:
            raise TmeValueError(
                f"range [{offset:#x}, {offset + n:#x}) is not aligned to 64-byte lines"
            )
        return offset, n

    # -- DRAM side: the encryption engine ---------------------------------------------------

    def _masks_for_pages(self, cipher: XtsCipher, first: int, n: int) -> np.ndarray | None:
        """Cached tweak masks of lines first..first+n-1 if they are a few whole pages."""
        if first % _LINES_PER_PAGE or n % _LINES_PER_PAGE \
                or n > _MASK_CACHE_MAX_PAGES_PER_CALL * _LINES_PER_PAGE:
            return None
        cache = self._page_masks
        first_page = first // _LINES_PER_PAGE
        keys = [(cipher.serial, first_page + i) for i in range(n // _LINES_PER_PAGE)]
        parts: list[np.ndarray | None] = [cache.get(k) for k in keys]
        missing = [i for i, m in enumerate(parts) if m is None]
        if missing:
            lines: np.ndarray = (np.array(missing, dtype=_U64)[:, None] + np.uint64(first_page)) \
                * np.uint64(_LINES_PER_PAGE) + np.arange(_LINES_PER_PAGE, dtype=_U64)
            fresh = cipher.line_masks(lines.reshape(-1) << np.uint64(LINE_SHIFT))
            fresh = fresh.reshape(len(missing), -1)
            for row, i in enumerate(missing):
                parts[i] = cache[keys[i]] = fresh[row]
            while len(cache) > _MASK_CACHE_PAGES:
                cache.popitem(last=False)
        for i, k in enumerate(keys):
            if i not in missing:
                cache.move_to_end(k)
        ready = [m for m in parts if m is not None]  # all of them, by now
        return ready[0] if len(ready) == 1 else np.concatenate(ready)

    def _store(self, keyid: int, first: int, lines: np.ndarray | None, plain: bytes) -> None:
        """Encrypt whole lines through `keyid` into DRAM: lines[i] (or first + i) gets
        plain[64i:64i+64]."""
        entry = self._keys[keyid]
        n = len(plain) >> LINE_SHIFT
        if n == 1 and lines is None and self._macs is None:
            # One line, no MAC (hence no poison): skip numpy, whose per-call cost dominates.
            start = first << LINE_SHIFT
            self._dram[start:start + LINE_SIZE] = (
                plain if entry.cipher is None else entry.cipher.encrypt_line(plain, start))
            self.stats.lines_encrypted += 1
            return
        idx = np.arange(first, first + n, dtype=_U64) if lines is None else lines
        masks = None
        if lines is None and entry.cipher is not None:
            masks = self._masks_for_pages(entry.cipher, first, n)
        if entry.cipher is None:
            ct = plain
        elif masks is not None:
            ct = entry.cipher.crypt_lines(plain, masks, True)
        elif n == 1:
            ct = entry.cipher.encrypt_line(plain, int(idx[0]) << LINE_SHIFT)
        else:
            ct = entry.cipher.encrypt_units(plain, idx << np.uint64(LINE_SHIFT))
        self.stats.lines_encrypted += n
        if lines is None:
            self._dram[first << LINE_SHIFT:(first + n) << LINE_SHIFT] = ct
        else:
            self._dram_lines[idx] = np.frombuffer(ct, dtype=np.uint8).reshape(n, LINE_SIZE)
        if self._macs is not None:
            self._macs[idx] = entry.mac.tags(ct, idx << np.uint64(LINE_SHIFT))
        if self._poisoned:
            self._poisoned.difference_update(idx.tolist())

    def _load(self, keyid: int, first: int, lines: np.ndarray | None, n: int) -> bytes:
        """Decrypt n whole lines through `keyid` (lines[i], or first + i); raises _BadLine."""
        entry = self._keys[keyid]
        if n == 1 and lines is None and self._macs is None:
            start = first << LINE_SHIFT
            ct = bytes(self._dram[start:start + LINE_SIZE])
            self.stats.lines_decrypted += 1
            return ct if entry.cipher is None else entry.cipher.decrypt_line(ct, start)
        if lines is None:
            ct = bytes(self._dram[first << LINE_SHIFT:(first + n) << LINE_SHIFT])
            idx = np.arange(first, first + n, dtype=_U64)
        else:
            idx = lines
            ct = self._dram_lines[idx].tobytes()
        if self._poisoned:
            for line in idx.tolist():
                if line in self._poisoned:
                    raise _BadLine(line, "line is poisoned")
        if self._macs is not None:
            bad = np.flatnonzero(entry.mac.tags(ct, idx << np.uint64(LINE_SHIFT))
                                 != self._macs[idx])
            if bad.size:
                poisoned = idx[bad].tolist()
                self._poisoned.update(poisoned)
                self.stats.lines_poisoned += len(poisoned)
                raise _BadLine(poisoned[0], "MAC mismatch (wrong key, or never written)")
        self.stats.lines_decrypted += n
        if entry.cipher is None:
            return ct
        if lines is None:
            masks = self._masks_for_pages(entry.cipher, first, n)
            if masks is not None:
                return entry.cipher.crypt_lines(ct, masks, False)
        if n == 1:
            return entry.cipher.decrypt_line(ct, int(idx[0]) << LINE_SHIFT)
        return entry.cipher.decrypt_units(ct, idx << np.uint64(LINE_SHIFT))

    def _machine_check(self, bad: _BadLine, keyid: int) -> MachineCheck:
        self.stats.machine_checks += 1
        return MachineCheck(bad.line << LINE_SHIFT, keyid, bad.reason)

    # -- cache side -------------------------------------------------------------------------

    def _insert(self, tag: int, line: bytes, dirty: bool) -> None:
        cache = self._cache
        cache[tag] = line
        if dirty:
            self._dirty.add(tag)
        if len(cache) > self.cache_lines:
            old, data = cache.popitem(last=False)
            self.stats.cache_evictions += 1
            if old in self._dirty:
                self._dirty.discard(old)
                self.stats.cache_writebacks += 1
                self._store(old >> self._tag_shift, old & self._line_mask, None, data)

    def _writeback(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Write dirty cached lines to DRAM, batched per KeyID, under each KeyID's current key.

        Which alias wins when two aliases of one line are both dirty is unspecified on
        hardware; here the KeyID first seen in `items` is written first.
        """
        groups: dict[int, tuple[list[int], list[bytes]]] = {}
        for tag, data in items:
            keyid = tag >> self._tag_shift
            group = groups.setdefault(keyid, ([], []))
            group[0].append(tag & self._line_mask)
            group[1].append(data)
        for keyid, (lines, datas) in groups.items():
            self.stats.cache_writebacks += len(lines)
            self._store(keyid, 0, np.array(lines, dtype=_U64), b"".join(datas))

    def _cached_tags(self, lo: int, hi: int) -> list[int]:
        """Tags in [lo, hi) present in the cache, without walking more than needed."""
        cache = self._cache
        if hi - lo <= len(cache):
            return [t for t in range(lo, hi) if t in cache]
        return [t for t in cache if lo <= t < hi]

    def _drop(self, tags: list[int], write_back: bool) -> None:
        dirty = []
        for tag in tags:
            data = self._cache.pop(tag)
            if tag in self._dirty:
                self._dirty.discard(tag)
                dirty.append((tag, data))
        if write_back and dirty:
            self._writeback(dirty)

    def _fill(self, keyid: int, first: int, count: int) -> list[bytes]:
        """Lines first..first+count-1 through `keyid`, from the cache or filled into it."""
        cache = self._cache
        base = keyid << self._tag_shift | first
        out: list[bytes] = [b""] * count
        missing = []
        for i in range(count):
            line = cache.get(base + i)
            if line is None:
                missing.append(i)
            else:
                cache.move_to_end(base + i)
                out[i] = line
        self.stats.cache_hits += count - len(missing)
        if missing:
            self.stats.cache_misses += len(missing)
            if len(missing) == count:
                plain = self._load(keyid, first, None, count)
            else:
                plain = self._load(keyid, 0, np.array(missing, dtype=_U64) + np.uint64(first),
                                   len(missing))
            for k, i in enumerate(missing):
                line = plain[k << LINE_SHIFT:(k + 1) << LINE_SHIFT]
                out[i] = line
                self._insert(base + i, line, False)
        return out

    # -- CPU side: loads and stores ---------------------------------------------------------

    def read(self, offset: int, n: int, keyid: int = 0) -> bytes:
        """Load n bytes at DRAM `offset` through alias `keyid` (any length and alignment)."""
        if (type(offset) is int and type(n) is int and type(keyid) is int and self.cache_enabled
                and offset >= 0 and n > 0 and offset + n <= self.memory_size
                and 0 <= keyid <= self.max_keyid and (offset & 63) + n <= LINE_SIZE):
            tag = keyid << self._tag_shift | offset >> LINE_SHIFT
            line = self._cache.get(tag)
            if line is not None:
                self._cache.move_to_end(tag)
                self.stats.cache_hits += 1
            elif self._macs is None:  # a miss that cannot machine-check
                self.stats.cache_misses += 1
                line = self._load(keyid, offset >> LINE_SHIFT, None, 1)
                self._insert(tag, line, False)
            else:
                return self._read(offset, n, keyid)
            lo = offset & 63
            return line[lo:lo + n]
        return self._read(offset, n, keyid)

    def _read(self, offset: object, n: object, keyid: object) -> bytes:
        offset, n = self._range(offset, n)
        keyid = self._keyid(keyid)
        if n == 0:
            return b""
        first = offset >> LINE_SHIFT
        count = ((offset + n - 1) >> LINE_SHIFT) - first + 1
        try:
            if self.cache_enabled:
                data = b"".join(self._fill(keyid, first, count))
            else:
                data = self._load(keyid, first, None, count)
        except _BadLine as bad:
            raise self._machine_check(bad, keyid) from None
        lo = offset & 63
        return data[lo:lo + n]

    def write(self, offset: int, data: bytes, keyid: int = 0) -> None:
        """Store `data` at DRAM `offset` through alias `keyid` (any length and alignment).

        A partial line is read-modify-written. If that fill fails its integrity check (the
        line belongs to another key), the store is dropped and the line poisoned, as a store
        merged into a poisoned line on hardware: no #MC until someone reads it.
        """
        if (type(data) is bytes and data and type(offset) is int and type(keyid) is int
                and self.cache_enabled and offset >= 0 and offset + len(data) <= self.memory_size
                and 0 <= keyid <= self.max_keyid and (offset & 63) + len(data) <= LINE_SIZE):
            tag = keyid << self._tag_shift | offset >> LINE_SHIFT
            cache = self._cache
            line = cache.get(tag)
            lo = offset & 63
            if line is not None:
                cache[tag] = line[:lo] + data + line[lo + len(data):]
                cache.move_to_end(tag)
                self._dirty.add(tag)
                self.stats.cache_hits += 1
                return
            if self._macs is None:  # a miss whose fill cannot fail
                self.stats.cache_misses += 1
                if len(data) < LINE_SIZE:
                    line = self._load(keyid, offset >> LINE_SHIFT, None, 1)
                    data = line[:lo] + data + line[lo + len(data):]
                self._insert(tag, data, True)
                return
        self._write(offset, data, keyid)

    def _write(self, offset: object, data: object, keyid: object) -> None:
        data = _as_bytes(data)
        offset, n = self._range(offset, len(data))
        keyid = self._keyid(keyid)
        if n == 0:
            return
        first = offset >> LINE_SHIFT
        last = (offset + n - 1) >> LINE_SHIFT
        if not self.cache_enabled:
            self._write_uncached(offset, data, keyid, first, last)
            return
        base = keyid << self._tag_shift
        cache = self._cache
        pos = 0
        for line_no in range(first, last + 1):
            lo = (offset - (line_no << LINE_SHIFT)) if line_no == first else 0
            chunk = data[pos:pos + LINE_SIZE - lo]
            pos += len(chunk)
            tag = base | line_no
            old = cache.get(tag)
            if old is not None:
                self.stats.cache_hits += 1
                cache[tag] = old[:lo] + chunk + old[lo + len(chunk):]
                cache.move_to_end(tag)
                self._dirty.add(tag)
                continue
            self.stats.cache_misses += 1
            if len(chunk) < LINE_SIZE:
                try:
                    old = self._load(keyid, line_no, None, 1)
                except _BadLine:
                    self.stats.writes_dropped += 1
                    continue
                chunk = old[:lo] + chunk + old[lo + len(chunk):]
            self._insert(tag, chunk, True)

    def _write_uncached(self, offset: int, data: bytes, keyid: int, first: int,
                        last: int) -> None:
        end = offset + len(data)
        full_first, full_end = (offset + LINE_SIZE - 1) >> LINE_SHIFT, end >> LINE_SHIFT
        for line_no in sorted({first, last}):
            if full_first <= line_no < full_end:
                continue
            start = line_no << LINE_SHIFT
            lo, hi = max(offset, start) - start, min(end, start + LINE_SIZE) - start
            try:
                old = self._load(keyid, line_no, None, 1)
            except _BadLine:
                self.stats.writes_dropped += 1
                continue
            piece = data[start + lo - offset:start + hi - offset]
            self._store(keyid, line_no, None, old[:lo] + piece + old[hi:])
        if full_end > full_first:
            start = (full_first << LINE_SHIFT) - offset
            self._store(keyid, full_first, None,
                        data[start:start + ((full_end - full_first) << LINE_SHIFT)])

    # -- cache maintenance ------------------------------------------------------------------

    def clflush(self, offset: int, keyid: int = 0) -> None:
        """CLFLUSH the line holding `offset` of alias `keyid`: write back if dirty, invalidate.

        Only that alias: the cache is tagged by physical address, KeyID bits included.
        """
        offset, _ = self._range(offset, 1)
        tag = self._keyid(keyid) << self._tag_shift | offset >> LINE_SHIFT
        if tag in self._cache:
            self._drop([tag], write_back=True)

    def clflush_range(self, offset: int, n: int, keyid: int = 0) -> None:
        """CLFLUSH every line overlapping [offset, offset + n) of alias `keyid`."""
        offset, n = self._range(offset, n)
        keyid = self._keyid(keyid)
        if n == 0:
            return
        base = keyid << self._tag_shift
        first, last = offset >> LINE_SHIFT, (offset + n - 1) >> LINE_SHIFT
        self._drop(self._cached_tags(base | first, (base | last) + 1), write_back=True)

    def wbinvd(self) -> None:
        """WBINVD: write back every dirty line, then invalidate the whole cache."""
        dirty = [(tag, self._cache[tag]) for tag in self._cache if tag in self._dirty]
        self._cache.clear()
        self._dirty.clear()
        self._writeback(dirty)

    def is_cached(self, offset: int, keyid: int = 0) -> bool:
        """Whether the line holding `offset` is in the cache under alias `keyid`."""
        offset, _ = self._range(offset, 1)
        return (self._keyid(keyid) << self._tag_shift | offset >> LINE_SHIFT) in self._cache

    # -- bulk interface (for the emulator backend) ------------------------------------------

    def read_lines(self, offset: int, nlines: int, keyid: int = 0) -> bytes:
        """Read `nlines` whole lines from line-aligned `offset` through `keyid` in one batch.

        Coherent with lines cached under the same alias (they are used, not refilled); lines
        not cached are decrypted straight from DRAM without being allocated in the cache,
        like a streaming read.
        """
        nlines = _int("nlines", nlines)
        if nlines < 0:
            raise TmeValueError(f"nlines {nlines} is negative")
        offset, n = self._line_range(offset, nlines << LINE_SHIFT)
        keyid = self._keyid(keyid)
        if n == 0:
            return b""
        first = offset >> LINE_SHIFT
        base = keyid << self._tag_shift
        cached = self._cached_tags(base | first, base | (first + nlines)) if self._cache else []
        try:
            if not cached:
                if nlines <= _BULK_LINES:
                    return self._load(keyid, first, None, nlines)
                return b"".join(self._load(keyid, first + a, None, min(_BULK_LINES, nlines - a))
                                for a in range(0, nlines, _BULK_LINES))
            self.stats.cache_hits += len(cached)
            hit = {t - base - first for t in cached}
            missing = [i for i in range(nlines) if i not in hit]
            out = bytearray(n)
            if missing:
                plain = self._load(keyid, 0, np.array(missing, dtype=_U64) + np.uint64(first),
                                   len(missing))
                rows = np.frombuffer(out, dtype=np.uint8).reshape(nlines, LINE_SIZE)
                rows[missing] = np.frombuffer(plain, dtype=np.uint8).reshape(-1, LINE_SIZE)
            for tag in cached:
                i = (tag - base - first) << LINE_SHIFT
                out[i:i + LINE_SIZE] = self._cache[tag]
            return bytes(out)
        except _BadLine as bad:
            raise self._machine_check(bad, keyid) from None

    def write_lines(self, offset: int, data: bytes, keyid: int = 0) -> None:
        """Write whole lines at line-aligned `offset` through `keyid` in one batch.

        Like MOVDIR64B / non-temporal stores: the lines go straight to DRAM (encrypted), the
        same alias's cached copies are invalidated, other aliases' copies are left alone
        (the cache is not coherent across KeyIDs). Full-line writes never read the old line,
        so they also clear poison.
        """
        data = _as_bytes(data)
        offset, n = self._line_range(offset, len(data))
        keyid = self._keyid(keyid)
        if n == 0:
            return
        first = offset >> LINE_SHIFT
        base = keyid << self._tag_shift
        if self._cache:
            self._drop(self._cached_tags(base | first, base | (first + (n >> LINE_SHIFT))),
                       write_back=False)
        view = memoryview(data)
        for a in range(0, n, _BULK_LINES << LINE_SHIFT):
            self._store(keyid, first + (a >> LINE_SHIFT), None,
                        view[a:a + (_BULK_LINES << LINE_SHIFT)])

    def _line_list(self, offsets: Iterable[int] | np.ndarray) -> np.ndarray:
        """Validated line numbers (uint64) of distinct, line-aligned offsets in memory."""
        try:
            arr = np.array(offsets if isinstance(offsets, np.ndarray) else list(offsets))
        except TypeError:
            raise TmeTypeError(
                f"offsets must be a sequence of ints, not {type(offsets).__name__}"
            ) from None
        if arr.size == 0:
            return np.zeros(0, dtype=_U64)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TmeTypeError(f"offsets must be a flat sequence of ints, got {arr.dtype} "
                               f"with shape {arr.shape}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= self.memory_size)]
        if bad.size:
            raise TmeValueError(
                f"offset {int(bad[0]):#x} is outside memory [0, {self.memory_size:#x})"
            )
        bad = arr[arr % LINE_SIZE != 0]
        if bad.size:
            raise TmeValueError(f"offset {int(bad[0]):#x} is not aligned to a 64-byte line")
        lines = (arr >> LINE_SHIFT).astype(_U64)
        if np.unique(lines).size != lines.size:
            raise TmeValueError("offsets name the same line more than once")
        return lines

    def read_lines_at(self, offsets: Iterable[int] | np.ndarray, keyid: int = 0) -> bytes:
        """Read the whole lines at line-aligned `offsets` (any order) in one batch.

        Cache behaviour as `read_lines`: the same alias's cached copies are used, nothing is
        allocated.
        """
        keyid = self._keyid(keyid)
        lines = self._line_list(offsets)
        n = lines.size
        if n == 0:
            return b""
        base = keyid << self._tag_shift
        tags = (base | lines).tolist() if self._cache else []
        hit = [i for i, t in enumerate(tags) if t in self._cache]
        try:
            if not hit:
                return self._load(keyid, 0, lines, n)
            self.stats.cache_hits += len(hit)
            missing = np.setdiff1d(np.arange(n), hit, assume_unique=True)
            out = bytearray(n << LINE_SHIFT)
            if missing.size:
                plain = self._load(keyid, 0, lines[missing], missing.size)
                rows = np.frombuffer(out, dtype=np.uint8).reshape(n, LINE_SIZE)
                rows[missing] = np.frombuffer(plain, dtype=np.uint8).reshape(-1, LINE_SIZE)
            for i in hit:
                out[i << LINE_SHIFT:(i + 1) << LINE_SHIFT] = self._cache[tags[i]]
            return bytes(out)
        except _BadLine as bad:
            raise self._machine_check(bad, keyid) from None

    def write_lines_at(self, offsets: Iterable[int] | np.ndarray, data: bytes,
                       keyid: int = 0) -> None:
        """Write whole lines at line-aligned `offsets` (any order) in one batch: line i of
        `data` goes to offsets[i]. Cache behaviour as `write_lines`.

        For line-granular write-back of the dirty lines of a sandbox's pages.
        """
        data = _as_bytes(data)
        keyid = self._keyid(keyid)
        lines = self._line_list(offsets)
        n = lines.size
        if len(data) != n << LINE_SHIFT:
            raise TmeValueError(f"data is {len(data)} bytes, expected {n} lines x 64 bytes")
        if n == 0:
            return
        if self._cache:
            base = keyid << self._tag_shift
            self._drop([t for t in (base | lines).tolist() if t in self._cache],
                       write_back=False)
        view = memoryview(data)
        for a in range(0, n, _BULK_LINES):
            self._store(keyid, 0, lines[a:a + _BULK_LINES],
                        view[a << LINE_SHIFT:(a + _BULK_LINES) << LINE_SHIFT])

    def rekey(self, offset: int, n: int, from_keyid: int, to_keyid: int) -> None:
        """Relocate whole lines from alias `from_keyid` to alias `to_keyid` in place.

        Reads through the old alias (its dirty cached lines included), invalidates the old
        alias's cached copies, writes through the new one. With integrity, a line that does
        not verify under the old key raises MachineCheck before anything is written.
        """
        offset, n = self._line_range(offset, n)
        from_keyid = self._keyid(from_keyid)
        to_keyid = self._keyid(to_keyid)
        if n == 0:
            return
        plain = self.read_lines(offset, n >> LINE_SHIFT, from_keyid)
        first = offset >> LINE_SHIFT
        base = from_keyid << self._tag_shift
        if self._cache:
            self._drop(self._cached_tags(base | first, base | (first + (n >> LINE_SHIFT))),
                       write_back=False)
        self.write_lines(offset, plain, to_keyid)

    # -- inspection -------------------------------------------------------------------------

    def dram(self, offset: int, n: int) -> bytes:
        """Raw DRAM bytes (ciphertext, or plaintext of NO_ENCRYPT lines); bypasses the cache."""
        offset, n = self._range(offset, n)
        return bytes(self._dram[offset:offset + n])

    def dram_write(self, offset: int, data: bytes) -> None:
        """Overwrite raw DRAM bytes behind the memory encryption engine, MACs untouched.

        Models an attacker with physical access to the DIMMs (or a device writing around
        the engine), for tests and demos: splicing or flipping ciphertext.
        """
        data = _as_bytes(data)
        offset, n = self._range(offset, len(data))
        self._dram[offset:offset + n] = data

    def is_poisoned(self, offset: int) -> bool:
        """Whether the line holding DRAM `offset` is poisoned."""
        offset, _ = self._range(offset, 1)
        return offset >> LINE_SHIFT in self._poisoned
