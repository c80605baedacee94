"""Workload sources from Debian's source packages: pinned version, pinned sha256, cached.

`source_tree(pkg)` returns the unpacked upstream tree of a package under
~/.cache/tmebox/bench/src/ (or $TMEBOX_CACHE/bench/src), fetching the orig tarball
with `apt-get source --download-only NAME=VERSION` the first time. A tarball whose
hash differs from the pin is deleted and never unpacked. Nothing fetched enters the
repository. The deb-src configuration is the sandbox libc's (tmebox.toolchain.libc):
the same apt source file and helpers are reused here.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tmebox.bench.errors import FetchError
from tmebox.toolchain import libc
from tmebox.toolchain.archive import safe_extract


@dataclass(frozen=True)
class SourcePackage:
    """One Debian source package pinned to a version and its orig tarball's sha256."""

    name: str  # source package name
    version: str  # Debian version, epoch included
    tarball: str  # file name of the upstream (orig) tarball
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"

    @property
    def key(self) -> str:
        """Directory name of the unpacked tree (no epoch, no colon)."""
        return f"{self.name}-{self.version.split(':')[-1]}-{self.sha256[:12]}"


# Debian bookworm (12); hashes from the packages' .dsc files.
PACKAGES: dict[str, SourcePackage] = {
    p.name: p
    for p in (
        SourcePackage("zlib", "1:1.2.13.dfsg-1", "zlib_1.2.13.dfsg.orig.tar.bz2",
                      "71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1"),
        SourcePackage("bzip2", "1.0.8-5", "bzip2_1.0.8.orig.tar.gz",
                      "ab5a03176ee106d3f0fa90e381da478ddae405918153cca248e682cd0c4a2269"),
        SourcePackage("lua5.4", "5.4.4-3+deb12u1", "lua5.4_5.4.4.orig.tar.gz",
                      "164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61"),
        SourcePackage("sqlite3", "3.40.1-2+deb12u2", "sqlite3_3.40.1.orig.tar.xz",
                      "aaa776260ab4dc976db34aa7891819484c8676b5b2783123ebc6301e2ca5d655"),
        SourcePackage("xz-utils", "5.4.1-1+deb12u2", "xz-utils_5.4.1.orig.tar.xz",
                      "5d9827aa1875b21c288f78864bb26d2650b436ea8d2cad364e4921eb6266a5a5"),
    )
}

Downloader = Callable[[SourcePackage, Path], None]


def src_cache() -> Path:
    return libc.cache_dir() / "bench" / "src"


def _hint(pkg: SourcePackage, where: Path) -> str:
    return (f"put {pkg.tarball} (sha256 {pkg.sha256}) into {where} by hand, or run the "
            "benchmark as root on a Debian bookworm machine")


def _ensure_deb_src(pkg: SourcePackage, where: Path) -> None:
    """Make sure apt knows Debian's source packages (the libc's apt source file)."""
    if libc.OUR_APT_SOURCE.exists():
        return
    stanzas = libc._deb_src_stanzas()
    if not stanzas:
        raise FetchError(f"cannot fetch {pkg.name}: no Debian package sources configured in "
                         f"{libc.APT_SOURCES_DIR}; {_hint(pkg, where)}")
    try:
        libc.OUR_APT_SOURCE.write_text(
            "# Added by tmebox: Debian's source packages (sandbox libc, benchmarks).\n"
            + "\n\n".join(stanzas) + "\n")
    except OSError as e:
        raise FetchError(f"cannot fetch {pkg.name}: writing {libc.OUR_APT_SOURCE} failed "
                         f"({e.strerror}; run as root); {_hint(pkg, where)}") from None
    upd = libc._apt(["update"])
    if upd.returncode != 0:
        raise FetchError(f"cannot fetch {pkg.name}: apt-get update failed: "
                         f"{upd.stderr.strip().splitlines()[-1:]}; {_hint(pkg, where)}")


def apt_download(pkg: SourcePackage, dest: Path) -> None:
    """`apt-get source --download-only` into dest (the .dsc, orig and debian tarballs)."""
    if shutil.which("apt-get") is None:
        raise FetchError(f"cannot fetch {pkg.name}: apt-get is not available; "
                         f"{_hint(pkg, src_cache())}")
    res = libc._apt(["source", "--download-only", pkg.spec], cwd=dest)
    if res.returncode != 0:
        _ensure_deb_src(pkg, src_cache())
        res = libc._apt(["source", "--download-only", pkg.spec], cwd=dest)
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise FetchError(f"cannot fetch {pkg.spec}: apt-get source failed: "
                         f"{err[-1] if err else res.returncode}; {_hint(pkg, src_cache())}")


def fetch(pkg: SourcePackage, download: Downloader = apt_download) -> Path:
    """The hash-checked orig tarball of pkg in the cache, downloaded if it is not there.

    The download lands in a temporary directory; only a tarball with the pinned
    hash is moved into the cache, so a bad one never stays behind.
    """
    cache = src_cache()
    tarball = cache / pkg.tarball
    if tarball.is_file():
        if libc._sha256(tarball) == pkg.sha256:
            return tarball
        tarball.unlink()  # corrupt or replaced: fetch again
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
        download(pkg, Path(tmp))
        got = Path(tmp) / pkg.tarball
        if not got.is_file():
            raise FetchError(f"fetching {pkg.spec} did not produce {pkg.tarball}; "
                             f"{_hint(pkg, cache)}")
        digest = libc._sha256(got)
        if digest != pkg.sha256:
            raise FetchError(f"{pkg.tarball} has sha256 {digest}, expected {pkg.sha256}: "
                             f"deleted; {_hint(pkg, cache)}")
        os.replace(got, tarball)
    return tarball


def source_tree(pkg: SourcePackage, download: Downloader = apt_download) -> Path:
    """The unpacked upstream tree of pkg (the tarball's single top directory)."""
    dest = src_cache() / pkg.key
    done = dest / ".unpacked"
    with libc._locked(src_cache() / f".{pkg.name}.lock"):
        if not done.is_file():
            _unpack(fetch(pkg, download), dest)
    return dest / done.read_text().strip()


def _unpack(tarball: Path, dest: Path) -> None:
    """Unpack into a temporary directory and rename it to dest once complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{dest.name}-", dir=dest.parent))
    try:
        try:
            with tarfile.open(tarball) as tf:
                safe_extract(tf, tmp)
        except (OSError, tarfile.TarError) as e:
            raise FetchError(f"cannot unpack {tarball}: {e}") from None
        tops = [p.name for p in tmp.iterdir()]
        if len(tops) != 1 or not (tmp / tops[0]).is_dir():
            raise FetchError(f"{tarball}: expected one top directory, found {sorted(tops)}")
        (tmp / ".unpacked").write_text(tops[0] + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
