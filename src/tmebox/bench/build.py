"""Build a workload three ways (baseline, data, code+data), cached with build times.

The instrumented builds are `tmebox.toolchain.cc.build`. The baseline goes
through the same per-file path (`gcc -S`, then `as`) with the rewriter off
(cc's native mode) and is linked as a static executable against plain musl
(`tmebox.toolchain.libc`'s native build: same musl version and sources).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import (
    BASELINE,
    KERNEL_DIR,
    OPT,
    VARIANTS,
    Workload,
    baseline_cflags,
    sources,
)
from tmebox.errors import TmeboxError
from tmebox.toolchain import cc, libc, unit


@dataclass(frozen=True)
class Built:
    """The three builds of one workload."""

    workload: Workload
    paths: dict[str, Path]  # variant -> executable (baseline) or sandbox image
    cc_seconds: dict[str, float]  # variant -> wall seconds the build took (when it was made)
    code_bytes: dict[str, int]  # variant -> size of the executable code


def build_cache() -> Path:
    return libc.cache_dir() / "bench" / "build"


def gcc_version() -> str:
    compiler = unit.find_compiler("gcc")
    res = subprocess.run([compiler.path, "--version"], capture_output=True, text=True)
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


def build_key(w: Workload, files: list[Path]) -> str:
    """Hash of everything the builds depend on: sources, flags, toolchain, libc build."""
    h = hashlib.sha256()
    h.update(json.dumps(w.fingerprint(), sort_keys=True).encode())
    h.update(json.dumps(baseline_cflags()).encode())
    h.update(libc.build_key().encode())
    h.update(gcc_version().encode())
    h.update(Path(__file__).read_bytes())
    for f in [*files, *sorted(KERNEL_DIR.glob("*.h"))]:  # our sources include our headers
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def libgcc() -> str:
    compiler = unit.find_compiler("gcc")
    res = subprocess.run([compiler.path, "-print-libgcc-file-name"], capture_output=True,
                         text=True)
    path = res.stdout.strip()
    if res.returncode != 0 or not Path(path).is_file():
        raise BenchError("gcc -print-libgcc-file-name failed: cannot link the baseline")
    return path


def build_baseline(files: list[Path], include_dirs: list[Path], defines: list[str],
                   output: Path) -> None:
    """A static executable of files against plain musl, compiled like the sandboxed builds."""
    prefix = libc.ensure_libc(libc.NATIVE)
    compiler = unit.find_compiler("gcc")
    flags = [f"-O{OPT}", *baseline_cflags(), *[f"-I{d}" for d in include_dirs],
             *[f"-D{d}" for d in defines], "-nostdinc", "-isystem", str(prefix / "include"),
             "-isystem", compiler.include_dir]
    lib = prefix / "lib"
    with tempfile.TemporaryDirectory(prefix="tmebox-bench-") as tmp:
        objs = []
        for i, src in enumerate(files):
            obj = Path(tmp) / f"{i}-{src.stem}.o"
            unit.compile_unit(src, obj, isolation=libc.NATIVE, flags=flags)
            objs.append(str(obj))
        linked = Path(tmp) / "a.out"
        cmd = ["ld", "-static", "-o", str(linked), str(lib / "crt1.o"), str(lib / "crti.o"),
               *objs, "--start-group", str(lib / "libc.a"), libgcc(), "--end-group",
               str(lib / "crtn.o")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"linking the baseline {output.name} failed: {res.stderr.strip()}")
        os.replace(linked, output)


def _code_bytes(path: Path) -> int:
    """Bytes of executable code (for the verifier's MiB/s and the code-size ratio)."""
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as f:
        elf = ELFFile(f)
        return sum(s["p_memsz"] for s in elf.iter_segments()
                   if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1)


def publish_dir(work: Path, out_dir: Path) -> None:
    """Rename the finished build directory work to out_dir, whole (work is gone after)."""
    old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        out_dir.rename(old)  # a stale or rebuilt one: its files may be open, so moved first
    try:
        work.rename(out_dir)
    except OSError:  # another process put its build there first: the same inputs, use it
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def build(w: Workload, progress: Callable[[str], None] | None = None,
          rebuild: bool = False) -> Built:
    """The three builds of w, from the cache or built now (progress(msg) is told which)."""
    src = sources(w)
    key = build_key(w, src.files)
    out_dir = build_cache() / f"{w.name}-{key}"
    meta_file = out_dir / "meta.json"
    if meta_file.is_file() and not rebuild:
        meta = json.loads(meta_file.read_text())
        paths = {v: out_dir / meta["files"][v] for v in VARIANTS}
        if all(p.is_file() for p in paths.values()):
            return Built(w, paths, meta["cc_seconds"], meta["code_bytes"])
    # Built in a directory of its own and renamed into place whole: another process may be
    # building the same workload now, and neither may see the other's half-written files.
    build_cache().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{w.name}-", dir=build_cache()))
    files = {BASELINE: f"{w.name}.elf", **{v: f"{w.name}.{v.replace('+', '_')}.box"
                                           for v in VARIANTS if v != BASELINE}}
    for mode in (libc.NATIVE, *VARIANTS[1:]):
        libc.ensure_libc(mode)  # a libc built now would be charged to the first workload
    seconds: dict[str, float] = {}
    for v in VARIANTS:
        if progress:
            progress(f"building {w.name} ({v})")
        out = work / files[v]
        t0 = time.perf_counter()
        try:
            if v == BASELINE:
                build_baseline(src.files, src.include_dirs, src.defines, out)
            else:
                cc.build(src.files, out, isolation=v, opt=OPT, include_dirs=src.include_dirs,
                         defines=src.defines, libs=["m"])
        except TmeboxError as e:
            shutil.rmtree(work, ignore_errors=True)
            raise BenchError(f"building workload {w.name} ({v}) failed: {e}") from None
        seconds[v] = time.perf_counter() - t0
    code = {v: _code_bytes(work / files[v]) for v in VARIANTS}
    (work / "meta.json").write_text(json.dumps(
        {"files": files, "cc_seconds": seconds, "code_bytes": code,
         "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    publish_dir(work, out_dir)
    return Built(w, {v: out_dir / files[v] for v in VARIANTS}, seconds, code)
