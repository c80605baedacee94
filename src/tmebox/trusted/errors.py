"""The errors of the trusted core; `tmebox.errors` re-exports them beside the rest."""

from __future__ import annotations

__all__ = ["ImageError", "TmeboxError", "VerificationError"]


class TmeboxError(Exception):
    """Base of all tmebox errors."""


class ImageError(TmeboxError):
    """A file is not a well-formed tmebox sandbox image."""


class VerificationError(TmeboxError):
    """An image's code breaks a rule of its isolation mode."""
