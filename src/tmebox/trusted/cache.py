"""Where tmebox keeps its caches, and the one way their keys are made.

Here, in the trusted core, because the verdict store (trusted) needs both and the trusted core
imports nothing else of tmebox; every other cache (sandbox libc, `tmebox run`'s compiled
programs, benchmark builds, the fuzzer's monitor) uses the same two functions.

- `root()`: $TMEBOX_CACHE, default ~/.cache/tmebox: everything a run leaves behind.
- `shared()`: $TMEBOX_SHARED_CACHE, default `root()`: expensive artefacts that are addressed
  by the hash of what made them (the sandbox libc, fetched sources), so that a test session
  with its own `root()` still reuses them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["fingerprint", "root", "shared"]


def root() -> Path:
    """The cache root: $TMEBOX_CACHE, or ~/.cache/tmebox."""
    env = os.environ.get("TMEBOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tmebox"


def shared() -> Path:
    """The root of content-addressed, expensive artefacts: $TMEBOX_SHARED_CACHE, or root()."""
    env = os.environ.get("TMEBOX_SHARED_CACHE")
    return Path(env) if env else root()


def fingerprint(files: Iterable[Path], *extra: str | bytes, length: int = 16) -> str:
    """Hex digest of the files' names and contents (in the order given) and the extra items:
    a change to any of them is a different key."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for item in extra:
        h.update((item.encode() if isinstance(item, str) else item) + b"\0")
    return h.hexdigest()[:length]
