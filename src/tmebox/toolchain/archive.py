"""Unpacking fetched source tarballs safely on every Python the package accepts.

`extractall(filter="data")` exists from Python 3.11.4 (and 3.12) on; Debian 12's own 3.11.2
lacks it, and there the first use used to crash. Without it, each member is checked by hand
with the same rules the "data" filter applies before anything is written.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

__all__ = ["safe_extract"]


def safe_extract(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract every member of tf under dest; tarfile.TarError if one would leave it, is a
    device or FIFO, or links outside it."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    members = tf.getmembers()
    for m in members:
        _check(m, root)
        m.mode &= 0o755  # no setuid/setgid/sticky, no group/other write (as "data" does)
    tf.extractall(dest, members=members)  # noqa: S202 - every member checked above


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _check(m: tarfile.TarInfo, root: str) -> None:
    if os.path.isabs(m.name) or not _inside(root, os.path.join(root, m.name)):
        raise tarfile.TarError(f"member {m.name!r} would be written outside {root}")
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise tarfile.TarError(f"member {m.name!r} is a device or FIFO")
    if m.issym():
        target = os.path.join(root, os.path.dirname(m.name), m.linkname)
        if os.path.isabs(m.linkname) or not _inside(root, target):
            raise tarfile.TarError(f"symlink {m.name!r} -> {m.linkname!r} leaves {root}")
    if m.islnk() and (os.path.isabs(m.linkname)
                      or not _inside(root, os.path.join(root, m.linkname))):
        raise tarfile.TarError(f"hard link {m.name!r} -> {m.linkname!r} leaves {root}")
