"""Errors of the emulated TME-MK platform."""

from __future__ import annotations

from tmebox.errors import TmeboxError


class TmeError(TmeboxError):
    """Base of every error raised by `tmebox.tme`."""


class TmeValueError(TmeError, ValueError):
    """An argument has the right type but a bad value (offset, length, KeyID, key size...)."""


class TmeTypeError(TmeError, TypeError):
    """An argument has the wrong Python type (e.g. a str where bytes are expected)."""


class MachineCheck(TmeError):
    """An integrity check failed when a line was read from DRAM (a #MC on real hardware).

    The line is poisoned: every later read through any KeyID raises again until the line
    is fully rewritten.
    """

    def __init__(self, offset: int, keyid: int, reason: str) -> None:
        self.offset = offset
        self.keyid = keyid
        self.reason = reason
        super().__init__(f"machine check: line {offset:#x} read through KeyID {keyid}: {reason}")
