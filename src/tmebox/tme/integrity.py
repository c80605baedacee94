"""Per-line MACs for the integrity mode (TME-MK with integrity, as used by TDX).

Real parts keep a 28-bit SHA-3-based MAC per line in ECC metadata; the algorithm is not
public in enough detail to reproduce. The model uses an AES CBC-MAC over the fixed-length
message (line address block, 4 ciphertext blocks) truncated to 64 bits: a PRF for
fixed-length input, so it is unforgeable without the key, and it vectorises like the XTS
engine (5 ECB calls for any number of lines).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_U64 = np.dtype("<u8")
LINE_BLOCKS = 4


class LineMac:
    """64-bit MAC of 64-byte ciphertext lines bound to their DRAM address."""

    def __init__(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def tags(self, ciphertext: bytes | memoryview, addresses: np.ndarray) -> np.ndarray:
        """MAC tags (uint64) of len(addresses) consecutive 64-byte lines of `ciphertext`."""
        n = addresses.shape[0]
        blocks = np.frombuffer(ciphertext, dtype=_U64).reshape(n, LINE_BLOCKS, 2)
        first = np.zeros((n, 2), dtype=_U64)
        first[:, 0] = addresses
        buf = np.empty(2 * n + 2, dtype=_U64)  # update_into wants a block of slack
        out = buf.view(np.uint8).data
        state = buf[:2 * n].reshape(n, 2)
        self._enc.update_into(first.view(np.uint8).reshape(-1).data, out)
        for j in range(LINE_BLOCKS):
            np.bitwise_xor(state, blocks[:, j, :], out=state)
            self._enc.update_into(state.view(np.uint8).reshape(-1).data, out)
        return state[:, 0].copy()
