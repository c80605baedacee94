"""The verifier: the trusted core that decides whether an image's code may run in a window.

It enforces docs/design.md exactly: rules.py holds one function per per-instruction rule and
the RULES table, groups.py the confinement groups as exact encoding forms, scan.py the linear
pass and the positional rules, verdict.py the answer and its authenticated on-disk store. This
module is the entry point: `verify_code`, `verify_image`, `verify_file`.
"""

from __future__ import annotations

from pathlib import Path

from tmebox.trusted.image import Image
from tmebox.trusted.record import replace
from tmebox.trusted.rules import RULES, classify
from tmebox.trusted.scan import verify_code, verify_image
from tmebox.trusted.verdict import Verdict, remember, stored

__all__ = ["RULES", "Verdict", "classify", "verify_code", "verify_file", "verify_image",
           "verify_stored"]


def verify_stored(image: Image) -> Verdict:
    """The image's verdict: the one stored for its content by this verifier (verdict.stored),
    or a new one, which is stored."""
    verdict = stored(image.sha256)
    if verdict is None:
        verdict = verify_image(image)
        remember(image.sha256, verdict)
    return verdict


def verify_file(path: Path | str) -> Verdict:
    """Load and verify an image; verdicts are kept by content and verifier hash, in memory and
    (authenticated, see verdict.py) on disk."""
    return replace(verify_stored(Image.load(path)), name=str(path))
