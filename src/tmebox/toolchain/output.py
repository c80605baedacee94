"""Putting a finished output in place: renamed over a regular file (never half written),
written into anything else (`-o /dev/null`, a FIFO), which a rename would replace."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

__all__ = ["publish", "staging_dir"]


def _renamed(out: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(out).st_mode)
    except FileNotFoundError:
        return True


def staging_dir(out: Path) -> Path | None:
    """Where to write what becomes out: beside it if it is renamed there (one file
    system), else the system's temporary directory (None), not /dev."""
    return out.parent if _renamed(out) else None


def publish(tmp: Path, out: Path) -> None:
    """Move the finished file tmp to out; raises OSError."""
    if _renamed(out):
        os.replace(tmp, out)
        return
    with tmp.open("rb") as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
