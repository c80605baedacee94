"""The workloads and their three builds: baseline (plain static musl), data, code+data.

A workload is our harness (kernels/harness.c) plus either one of our kernels or a
real library from Debian's source packages driven by a small main of ours. All
three builds use the same compiler, the same -O level and -march, and musl 1.2.3
built from the same source: the baseline only lacks the instrumentation (the
rewriter and the flags it needs, abi.COMMON_CFLAGS' register reservations and
-mno-red-zone, and code+data's bundle alignment).
Builds are cached under ~/.cache/tmebox/bench/build/ by a hash of everything
they depend on, with the seconds each build took.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tmebox.bench import fetch
from tmebox.bench.errors import BenchError
from tmebox.trusted import abi

KERNEL_DIR = Path(__file__).parent / "kernels"
HARNESS = "harness.c"
BASELINE = "baseline"
VARIANTS = (BASELINE, *abi.ISOLATION_MODES)
OPT = "2"

# Flags of abi.COMMON_CFLAGS that exist only for the instrumentation: the baseline
# keeps the rest (-fPIE, -march, -mtune, no stack protector, no unwind tables).
INSTRUMENTATION_FLAGS = frozenset({
    f"-ffixed-{abi.BASE_REG}", f"-ffixed-{abi.SCRATCH_REG}", "-mno-red-zone",
    "-mno-tls-direct-seg-refs",
})


def baseline_cflags() -> list[str]:
    return [f for f in abi.COMMON_CFLAGS if f not in INSTRUMENTATION_FLAGS]


@dataclass(frozen=True)
class Workload:
    """One benchmark program: sources, how much work one run does, how to check it."""

    name: str
    description: str
    kernels: tuple[str, ...]  # our files in kernels/ besides the harness
    scale: int  # work per run in the full evaluation (~50-100 ms natively)
    quick_scale: int = 1
    package: str | None = None  # a key of fetch.PACKAGES
    # Relative to the source root (the unpacked tree, or what prepare() makes of it),
    # which is also the include directory; a callable lists them from the root.
    lib_sources: tuple[str, ...] | Callable[[Path], tuple[str, ...]] = ()
    defines: tuple[str, ...] = ()
    prepare: Callable[[Path], Path] | None = field(default=None, compare=False)

    @property
    def is_kernel(self) -> bool:
        return self.package is None

    def fingerprint(self) -> dict:
        libs = self.lib_sources if isinstance(self.lib_sources, tuple) else "computed"
        return {"name": self.name, "kernels": self.kernels, "package": self.package,
                "lib_sources": libs, "defines": self.defines}


def _sqlite_amalgamation(tree: Path) -> Path:
    """sqlite3.c/sqlite3.h generated from the source tree (needs tclsh), cached."""
    dest = fetch.src_cache() / f"{tree.parent.name}-amalgamation"
    if (dest / "sqlite3.c").is_file() and (dest / "sqlite3.h").is_file():
        return dest
    if shutil.which("tclsh") is None:
        raise BenchError("building the SQLite amalgamation needs tclsh: apt-get install tcl")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sqlite-gen-", dir=dest.parent) as tmp:
        env = dict(os.environ, LC_ALL="C")
        for cmd in ([str(tree / "configure"), "--disable-tcl"], ["make", "sqlite3.c"]):
            res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-10:])
                raise BenchError(f"generating the SQLite amalgamation: {' '.join(cmd)} "
                                 f"failed:\n{tail}")
        out = Path(tmp) / "out"
        out.mkdir()
        for name in ("sqlite3.c", "sqlite3.h"):
            shutil.copy(Path(tmp) / name, out / name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)
    return dest


# What xz's configure would find on x86-64 Linux, minus threads and the CLMUL CRC.
_LZMA_DEFINES = (
    "HAVE_STDINT_H", "HAVE_INTTYPES_H", "HAVE_STDBOOL_H", "HAVE__BOOL", "SIZEOF_SIZE_T=8",
    "HAVE_BYTESWAP_H", "HAVE___BUILTIN_BSWAPXX", "TUKLIB_SYMBOL_PREFIX=lzma_",
    "ASSUME_RAM=128", "HAVE_CHECK_CRC32", "HAVE_CHECK_CRC64", "HAVE_CHECK_SHA256",
    "HAVE_INTERNAL_SHA256", "HAVE_MF_HC3", "HAVE_MF_HC4", "HAVE_MF_BT2", "HAVE_MF_BT3",
    "HAVE_MF_BT4", "HAVE_LZIP_DECODER",
    *(f"HAVE_{kind}_{f}" for kind in ("ENCODER", "DECODER")
      for f in ("LZMA1", "LZMA2", "DELTA", "X86", "POWERPC", "IA64", "ARM", "ARMTHUMB",
                "ARM64", "SPARC")),
)
# liblzma without threads, assembler or the small (table-less) CRC variants.
_LZMA_DIRS = ("common", "check", "lz", "lzma", "rangecoder", "delta", "simple")
_LZMA_SKIP = re.compile(r".*(_mt|_tablegen|_small)\.c$|outqueue\.c|hardware_.*\.c")


def _liblzma_flat(tree: Path) -> Path:
    """liblzma's sources and headers in one directory (the workload's include directory),
    with its public headers beside them (`lzma.h`, `lzma/`), cached."""
    dest = fetch.src_cache() / f"{tree.parent.name}-liblzma"
    if (dest / "lzma.h").is_file():
        return dest
    src = tree / "src"
    with tempfile.TemporaryDirectory(prefix=".liblzma-", dir=fetch.src_cache()) as tmp:
        out = Path(tmp) / "out"
        shutil.copytree(src / "liblzma" / "api", out)
        for sub in _LZMA_DIRS:
            for f in sorted((src / "liblzma" / sub).iterdir()):
                if f.suffix == ".h" or (f.suffix == ".c" and not _LZMA_SKIP.match(f.name)):
                    shutil.copy(f, out / f.name)
        for f in sorted((src / "common").glob("*.h")):
            shutil.copy(f, out / f.name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(out, dest)
    return dest


def _c_files(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in root.glob("*.c")))


def _lua_sources(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in root.glob("*.c") if p.name not in ("lua.c", "luac.c")))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("chase", "pointer chasing: shuffled 32 Ki-node linked list (512 KiB)",
                 ("kern_chase.c",), scale=64),
        Workload("recurse", "recursion: fib(24) and 200-deep frames with a 96-byte buffer",
                 ("kern_recurse.c",), scale=64),
        Workload("indirect", "indirect calls through a 16-entry function-pointer table",
                 ("kern_indirect.c",), scale=32),
        Workload("memcpy", "musl memcpy of 8 B to 256 KiB, 4 MiB per size",
                 ("kern_memcpy.c",), scale=8),
        Workload("hash", "open-addressing hash table: 90K inserts, 180K lookups",
                 ("kern_hash.c",), scale=8),
        Workload("zlib", "zlib 1.2.13: deflate -6 and inflate 384 KiB of text in memory",
                 ("corpus.c", "drv_zlib.c"), scale=6, package="zlib",
                 lib_sources=("adler32.c", "crc32.c", "deflate.c", "inflate.c", "inftrees.c",
                              "inffast.c", "trees.c", "zutil.c", "compress.c", "uncompr.c")),
        Workload("bzip2", "bzip2 1.0.8: compress -9 and decompress 384 KiB of text in memory",
                 ("corpus.c", "drv_bzip2.c"), scale=12, package="bzip2",
                 lib_sources=("blocksort.c", "huffman.c", "crctable.c", "randtable.c",
                              "compress.c", "decompress.c", "bzlib.c"),
                 defines=("BZ_NO_STDIO",)),
        Workload("lua", "Lua 5.4.4 interpreter: embedded script (fib, tables, strings, closures)",
                 ("drv_lua.c",), scale=2, package="lua5.4", lib_sources=_lua_sources,
                 prepare=lambda tree: tree / "src"),
        Workload("sqlite", "SQLite 3.40.1 in :memory: - 40K-row table, index, 5 queries",
                 ("drv_sqlite.c",), scale=20, package="sqlite3",
                 lib_sources=("sqlite3.c",),
                 defines=("SQLITE_THREADSAFE=0", "SQLITE_OMIT_LOAD_EXTENSION",
                          "SQLITE_TEMP_STORE=3", "SQLITE_DEFAULT_MEMSTATUS=0",
                          "SQLITE_OMIT_DEPRECATED"),
                 prepare=_sqlite_amalgamation),
        Workload("xz", "xz-utils 5.4.1 (liblzma): .xz preset 1 compress + decompress of 384 KiB",
                 ("corpus.c", "drv_xz.c"), scale=12, package="xz-utils", lib_sources=_c_files,
                 defines=_LZMA_DEFINES, prepare=_liblzma_flat),
    )
}


def selected(names: list[str] | None, quick: bool) -> list[Workload]:
    """The workloads to run: the named ones, or all (kernels only with quick)."""
    if names:
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            raise BenchError(f"unknown workload(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(WORKLOADS)}")
        return [WORKLOADS[n] for n in names]
    return [w for w in WORKLOADS.values() if w.is_kernel or not quick]


@dataclass
class SourceSet:
    """Everything one build of a workload compiles."""

    files: list[Path]
    include_dirs: list[Path]
    defines: list[str]


def sources(w: Workload) -> SourceSet:
    """Fetch (if needed) and list the sources of a workload."""
    files = [KERNEL_DIR / HARNESS] + [KERNEL_DIR / k for k in w.kernels]
    includes: list[Path] = []
    if w.package is not None:
        tree = fetch.source_tree(fetch.PACKAGES[w.package])
        root = w.prepare(tree) if w.prepare else tree
        lib = w.lib_sources(root) if callable(w.lib_sources) else w.lib_sources
        files += [root / s for s in lib]
        includes = [root]
    for f in files:
        if not f.is_file():
            raise BenchError(f"workload {w.name}: missing source {f}")
    return SourceSet(files, includes, list(w.defines))
