"""Safe unpacking of fetched tarballs, with and without tarfile's extraction filters (Python
3.11.2, Debian 12's, has none: the first use used to crash there)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tmebox.toolchain.archive import safe_extract


def _tar(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        for m in members:
            data = b"x" * m.size if m.isfile() else None
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644):
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.mode = kind, link, mode
    m.size = 3 if kind == tarfile.REGTYPE else 0
    return m


@pytest.fixture(params=["filter", "by hand"])
def python(request, monkeypatch):
    if request.param == "by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_a_source_tree_unpacks(python, tmp_path: Path) -> None:
    path = _tar(tmp_path, _member("pkg/", tarfile.DIRTYPE, mode=0o755),
                _member("pkg/a.c", mode=0o4755), _member("pkg/b", tarfile.SYMTYPE, "a.c"))
    dest = tmp_path / "out"
    dest.mkdir()
    with tarfile.open(path) as tf:
        safe_extract(tf, dest)
    assert (dest / "pkg" / "a.c").read_bytes() == b"xxx"
    assert (dest / "pkg" / "b").resolve() == (dest / "pkg" / "a.c").resolve()
    assert not (dest / "pkg" / "a.c").stat().st_mode & 0o4000  # setuid dropped


@pytest.mark.parametrize("bad", [
    _member("../evil"), _member("/abs/evil"), _member("pkg/../../evil"),
    _member("pkg/link", tarfile.SYMTYPE, "../../outside"),
    _member("pkg/link", tarfile.SYMTYPE, "/etc/passwd"),
    _member("pkg/hard", tarfile.LNKTYPE, "../outside"),
    _member("pkg/dev", tarfile.CHRTYPE),
    _member("pkg/fifo", tarfile.FIFOTYPE),
], ids=lambda m: f"{m.name}->{m.linkname}" if m.linkname else m.name)
def test_members_that_leave_the_tree_are_refused(python, tmp_path: Path, bad) -> None:
    path = _tar(tmp_path, bad)
    dest = tmp_path / "out"
    dest.mkdir()
    with tarfile.open(path) as tf:
        if hasattr(tarfile, "data_filter") and bad.name.startswith("/"):
            safe_extract(tf, dest)  # tarfile's filter strips the leading "/": it stays inside
            assert (dest / "abs" / "evil").is_file()
        else:
            with pytest.raises(tarfile.TarError):
                safe_extract(tf, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()
    assert not Path("/abs/evil").exists()
