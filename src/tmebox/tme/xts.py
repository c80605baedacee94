"""AES-XTS (IEEE Std 1619) over many data units at once.

TME-MK encrypts every 64-byte line as one XTS data unit whose sequence number is the
line's address. A `cryptography` XTS context per line is far too slow (~17 MB/s), so the
mode is built here from AES-ECB: one ECB call encrypts the tweaks of all units, the
multiplications by alpha in GF(2^128) are vectorised with numpy, and one more ECB call
handles every data block of every unit.

Byte order follows IEEE 1619: the sequence number is a little-endian 128-bit integer, and a
tweak block is multiplied by alpha as a little-endian 128-bit integer (shift left by one,
fold the carry out of bit 127 back in as 0x87).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tmebox.tme.errors import TmeTypeError, TmeValueError

BLOCK = 16
_GF_REDUCE = 0x87
_MASK128 = (1 << 128) - 1
_U64 = np.dtype("<u8")


def _check_key(name: str, key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TmeTypeError(f"{name} must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) not in (16, 32):
        raise TmeValueError(f"{name} must be 16 or 32 bytes (AES-128/256), got {len(key)} bytes")
    return key


class XtsCipher:
    """XTS-AES with data key `key` (Key1) and tweak key `tweak_key` (Key2).

    Data units are `unit_size` bytes (a multiple of 16: no ciphertext stealing, which TME
    never needs); unit i of a call uses sequence number seqnos[i] (< 2**64).
    """

    def __init__(self, key: bytes, tweak_key: bytes) -> None:
        key = _check_key("data key", key)
        tweak_key = _check_key("tweak key", tweak_key)
        if len(key) != len(tweak_key):
            raise TmeValueError(
                f"data key ({len(key)} bytes) and tweak key ({len(tweak_key)} bytes) "
                "must have the same size"
            )
        self.key_size = len(key)
        # ECB contexts carry no state between update() calls, so one of each serves forever.
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self._dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
        self._tweak = Cipher(algorithms.AES(tweak_key), modes.ECB()).encryptor()

    # -- batch path -------------------------------------------------------------------------

    def _masks(self, seqnos: np.ndarray, blocks: int) -> np.ndarray:
        """Tweak masks T_{i,j} = E(Key2, seqno_i) * alpha^j as uint64 (lo, hi) pairs,
        shape (units, blocks, 2). The loop runs over the blocks of a unit (4 for a line),
        each step vectorised over all units."""
        n = seqnos.shape[0]
        plain = np.zeros((n, 2), dtype=_U64)
        plain[:, 0] = seqnos
        masks = np.empty((n, blocks, 2), dtype=_U64)
        t0 = np.empty(2 * n + 2, dtype=_U64)  # update_into wants a block of slack
        self._tweak.update_into(plain.view(np.uint8).reshape(-1), t0.view(np.uint8))
        t = t0[:2 * n].reshape(n, 2)
        masks[:, 0, :] = t
        one, sixty_three, reduce = np.uint64(1), np.uint64(63), np.uint64(_GF_REDUCE)
        for j in range(1, blocks):
            lo, hi = masks[:, j - 1, 0], masks[:, j - 1, 1]
            np.bitwise_or(hi << one, lo >> sixty_three, out=masks[:, j, 1])
            np.bitwise_xor(lo << one, (hi >> sixty_three) * reduce, out=masks[:, j, 0])
        return masks

    def _crypt(self, data: bytes | bytearray | memoryview, seqnos: Iterable[int] | np.ndarray,
               unit_size: int, encrypt: bool) -> bytes:
        if unit_size <= 0 or unit_size % BLOCK:
            raise TmeValueError(f"XTS unit size must be a positive multiple of 16, got {unit_size}")
        seq = np.asarray(seqnos, dtype=_U64).reshape(-1)
        n = seq.shape[0]
        if len(data) != n * unit_size:
            raise TmeValueError(
                f"XTS input is {len(data)} bytes, expected {n} units x {unit_size} bytes"
            )
        if n == 0:
            return b""
        masks = self._masks(seq, unit_size // BLOCK).reshape(-1)
        words = masks.shape[0]
        # update_into a preallocated buffer: update() returning fresh bytes is ~10x slower.
        buf = np.empty(words + 2, dtype=_U64)
        x = buf[:words]
        np.bitwise_xor(np.frombuffer(data, dtype=_U64), masks, out=x)
        ecb = self._enc if encrypt else self._dec
        ecb.update_into(x.view(np.uint8), buf.view(np.uint8))
        np.bitwise_xor(x, masks, out=x)
        return x.tobytes()

    def encrypt_units(self, data: bytes | bytearray | memoryview,
                      seqnos: Iterable[int] | np.ndarray, unit_size: int = 64) -> bytes:
        """Encrypt len(seqnos) consecutive data units of `unit_size` bytes."""
        return self._crypt(data, seqnos, unit_size, True)

    def decrypt_units(self, data: bytes | bytearray | memoryview,
                      seqnos: Iterable[int] | np.ndarray, unit_size: int = 64) -> bytes:
        """Decrypt len(seqnos) consecutive data units of `unit_size` bytes."""
        return self._crypt(data, seqnos, unit_size, False)

    # -- one 64-byte line -------------------------------------------------------------------

    def _line_mask(self, seqno: int) -> int:
        t = int.from_bytes(self._tweak.update(seqno.to_bytes(BLOCK, "little")), "little")
        mask = t
        for j in range(1, 4):
            t = ((t << 1) & _MASK128) ^ (_GF_REDUCE if t >> 127 else 0)
            mask |= t << (128 * j)
        return mask

    def encrypt_line(self, line: bytes, seqno: int) -> bytes:
        """Encrypt one 64-byte unit; the same result as encrypt_units, with less overhead."""
        m = self._line_mask(seqno)
        x = (int.from_bytes(line, "little") ^ m).to_bytes(64, "little")
        return (int.from_bytes(self._enc.update(x), "little") ^ m).to_bytes(64, "little")

    def decrypt_line(self, line: bytes, seqno: int) -> bytes:
        """Decrypt one 64-byte unit; the same result as decrypt_units, with less overhead."""
        m = self._line_mask(seqno)
        x = (int.from_bytes(line, "little") ^ m).to_bytes(64, "little")
        return (int.from_bytes(self._dec.update(x), "little") ^ m).to_bytes(64, "little")
