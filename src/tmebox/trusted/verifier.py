"""The verifier: the trusted core that decides whether an image's code may run in a window.

It enforces docs/design.md exactly: rules.py holds one function per per-instruction rule and
the RULES table, groups.py the confinement groups as exact encoding forms, scan.py the linear
pass and the positional rules, verdict.py the answer and its authenticated on-disk store. This
module is the entry point: `verify_code`, `verify_image`, `verify_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from pathlib import Path

from tmebox.trusted import cache
from tmebox.trusted.image import Image
from tmebox.trusted.rules import RULES, classify
from tmebox.trusted.scan import verify_code, verify_image
from tmebox.trusted.verdict import Store, Verdict

__all__ = ["RULES", "Verdict", "classify", "verify_code", "verify_file", "verify_image"]

# Hash of the code that decides verdicts: a verifier change invalidates stored ones.
_SOURCE_HASH = cache.fingerprint(
    sorted(Path(__file__).parent.glob("*.py")),
    *(f"{p} {importlib.metadata.version(p)}" for p in ("iced-x86", "capstone")), length=64)
_VERDICTS: dict[str, Verdict] = {}


def verify_file(path: Path | str) -> Verdict:
    """Load and verify an image; verdicts are kept by content and verifier hash, in memory and
    (authenticated, see verdict.py) on disk."""
    image = Image.load(path)
    key = hashlib.sha256(f"{image.sha256} {_SOURCE_HASH}".encode()).hexdigest()
    store = Store(cache.root() / "verdicts")
    verdict = _VERDICTS.get(key) or store.get(key)
    if verdict is None:
        verdict = verify_image(image)
        store.put(key, verdict)
    _VERDICTS[key] = verdict
    return dataclasses.replace(verdict, name=str(path))
