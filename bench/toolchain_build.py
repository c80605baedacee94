"""Toolchain speed: a full sandbox-libc rebuild from the cached musl source, and the
per-file compile throughput of `tmebox cc`, each as a ratio to plain gcc measured in
the same run (runs interleaved, medians reported).

    .venv/bin/python bench/toolchain_build.py [--libc-repeats 1] [--cc-repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tmebox.toolchain import libc, unit

PROGRAMS = Path(__file__).resolve().parent.parent / "tests" / "toolchain" / "programs"


def time_libc_build(mode: str, tarball: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="tmebox-bench-libc-") as tmp:
        t0 = time.perf_counter()
        libc._build(tarball, Path(tmp), mode, progress=False)
        return time.perf_counter() - t0


def time_compiles(mode: str, sources: list[Path], flags: list[str]) -> float:
    """Seconds to compile every source to an object (sequentially) in mode."""
    with tempfile.TemporaryDirectory(prefix="tmebox-bench-cc-") as tmp:
        t0 = time.perf_counter()
        for i, src in enumerate(sources):
            obj = Path(tmp) / f"{i}.o"
            if mode == "gcc":
                subprocess.run([unit.find_compiler().path, *flags, "-c", "-o", str(obj), str(src)],
                               check=True)
            else:
                unit.compile_unit(src, obj, isolation=mode, flags=flags)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libc-repeats", type=int, default=1)
    ap.add_argument("--cc-repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tarball = libc.fetch_musl()
    results: dict[str, dict] = {"cpus": os.cpu_count(), "libc_build_s": {}, "compile": {}}

    builds: dict[str, list[float]] = {m: [] for m in (libc.NATIVE, *libc.MODES)}
    for r in range(args.libc_repeats):
        for mode in builds:  # interleaved: native, data, code+data, native, ...
            t = time_libc_build(mode, tarball)
            builds[mode].append(t)
            print(f"libc build {mode:10s} run {r + 1}: {t:6.1f} s", file=sys.stderr)
    for mode, ts in builds.items():
        results["libc_build_s"][mode] = statistics.median(ts)
    results["libc_build_s"]["both_sandbox_modes"] = sum(
        results["libc_build_s"][m] for m in libc.MODES)

    sources = sorted(PROGRAMS.glob("*.c"))
    prefix = libc.ensure_libc("data")
    compiler = unit.find_compiler()
    flags = ["-O2", "-nostdinc", "-isystem", str(prefix / "include"), "-isystem",
             compiler.include_dir]
    compiles: dict[str, list[float]] = {m: [] for m in ("gcc", *libc.MODES)}
    for _ in range(args.cc_repeats):
        for mode in compiles:
            compiles[mode].append(time_compiles(mode, sources, flags))
    base = statistics.median(compiles["gcc"])
    for mode, ts in compiles.items():
        med = statistics.median(ts)
        results["compile"][mode] = {"files_per_s": len(sources) / med,
                                    "ms_per_file": 1000 * med / len(sources),
                                    "ratio_to_gcc": med / base}

    print("| libc build (from cached source) | seconds |")
    print("|---|---|")
    for mode, t in results["libc_build_s"].items():
        print(f"| {mode} | {t:.1f} |")
    print()
    print(f"| compile ({len(sources)} test programs, -O2) | ms/file | files/s | vs gcc -c |")
    print("|---|---|---|---|")
    for mode, r in results["compile"].items():
        print(f"| {mode} | {r['ms_per_file']:.0f} | {r['files_per_s']:.1f} | "
              f"{r['ratio_to_gcc']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
