"""The KeyID key table and the PCONFIG MKTME_KEY_PROGRAM leaf.

Command and status numbers are the architectural ones of Intel's MKTME specification (the
same values as Linux's `intel_pconfig.h` and the TDX module's `mktme.h`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from tmebox.tme.integrity import LineMac
from tmebox.tme.xts import XtsCipher


class PconfigStatus(enum.IntEnum):
    """Status PCONFIG(MKTME_KEY_PROGRAM) leaves in EAX (0 = success, ZF clear)."""

    PROG_SUCCESS = 0
    INVALID_PROG_CMD = 1
    ENTROPY_ERROR = 2
    INVALID_KEYID = 3
    INVALID_ENC_ALG = 4
    DEVICE_BUSY = 5
    SUCCESS = 0  # short alias of PROG_SUCCESS


class PconfigCommand(enum.IntEnum):
    """KEYID_CTRL.COMMAND (bits 7:0) of the MKTME_KEY_PROGRAM structure."""

    SET_KEY_DIRECT = 0
    SET_KEY_RANDOM = 1
    CLEAR_KEY = 2
    NO_ENCRYPT = 3


# Algorithm name -> (KEYID_CTRL.ENC_ALG bit, i.e. its IA32_TME_CAPABILITY bit; key bytes).
ALGORITHMS: dict[str, tuple[int, int]] = {
    "aes-xts-128": (0, 16),
    "aes-xts-256": (2, 32),
}


class KeyKind(enum.Enum):
    """What a KeyID's key-table entry holds."""

    TME = "tme"  # the platform key of KeyID 0; also every cleared KeyID
    DIRECT = "direct"  # software-supplied data and tweak keys
    RANDOM = "random"  # keys drawn by the CPU
    NO_ENCRYPT = "no-encrypt"  # lines go to DRAM as plaintext


@dataclass(frozen=True, eq=False)
class KeyEntry:
    """One key-table slot. KeyIDs that share an entry object share its keys."""

    kind: KeyKind
    algorithm: str | None
    cipher: XtsCipher | None  # None: NO_ENCRYPT
    mac: LineMac


def integrity_key(secret: bytes, label: bytes, key: bytes = b"", tweak_key: bytes = b"") -> bytes:
    """The per-key MAC key: a function of the data keys under a secret only the CPU knows.

    Deriving it (rather than drawing it at random) keeps two KeyIDs programmed with the same
    keys interchangeable, as their ciphertext is.
    """
    msg = label + len(key).to_bytes(2, "little") + key + tweak_key
    return hmac.new(secret, msg, hashlib.sha256).digest()[:16]


def make_entry(kind: KeyKind, algorithm: str | None, key: bytes, tweak_key: bytes,
               secret: bytes) -> KeyEntry:
    """Build a key-table entry; NO_ENCRYPT ignores the keys."""
    if kind is KeyKind.NO_ENCRYPT:
        return KeyEntry(kind, None, None, LineMac(integrity_key(secret, b"no-encrypt")))
    assert algorithm is not None
    return KeyEntry(kind, algorithm, XtsCipher(key, tweak_key),
                    LineMac(integrity_key(secret, b"xts:" + algorithm.encode(), key, tweak_key)))
