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
import os
from pathlib import Path

from tmebox.trusted.image import Image
from tmebox.trusted.rules import RULES, classify
from tmebox.trusted.scan import verify_code, verify_image
from tmebox.trusted.verdict import Store, Verdict

__all__ = ["RULES", "Verdict", "classify", "verify_code", "verify_file", "verify_image"]

# Same root as the sandbox libc cache (tmebox.toolchain.libc): $TMEBOX_CACHE or ~/.cache/tmebox.
CACHE_DIR = Path(os.environ.get("TMEBOX_CACHE") or Path.home() / ".cache" / "tmebox") / "verdicts"


def _source_hash() -> str:
    """Hash of the code that decides verdicts: a verifier change invalidates stored ones."""
    h = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        h.update(module.name.encode() + b"\0" + module.read_bytes())
    for package in ("iced-x86", "capstone"):
        h.update(f"{package} {importlib.metadata.version(package)}".encode())
    return h.hexdigest()


_SOURCE_HASH = _source_hash()
_VERDICTS: dict[str, Verdict] = {}


def verify_file(path: Path | str) -> Verdict:
    """Load and verify an image; verdicts are kept by content and verifier hash, in memory and
    (authenticated, see verdict.py) on disk."""
    image = Image.load(path)
    key = hashlib.sha256(f"{image.sha256} {_SOURCE_HASH}".encode()).hexdigest()
    store = Store(CACHE_DIR)
    verdict = _VERDICTS.get(key) or store.get(key)
    if verdict is None:
        verdict = verify_image(image)
        store.put(key, verdict)
    _VERDICTS[key] = verdict
    return dataclasses.replace(verdict, name=str(path))
