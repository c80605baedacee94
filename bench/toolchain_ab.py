"""A/B of one toolchain feature on one workload's code+data build (docs/toolchain.md).

Features: `nopmerge` (one-byte nop runs merged into multi-byte nops) and `callpad` (call
groups padded by the assembler to end their bundle, instead of whole 32-byte groups).
Builds the workload the way `tmebox bench` does, twice (the second time with the feature
switched off for the workload's own code; the cached sandbox libc is the same in both),
counts the nop bytes of each image's .text, then runs baseline, on and off interleaved in
one process on one CPU and prints median CPU-time overheads with the quartiles of the
per-round ratios.

    .venv/bin/python bench/toolchain_ab.py --feature callpad --workload lua --rounds 31
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import capstone
from elftools.elf.elffile import ELFFile

from tmebox.bench import build, workloads
from tmebox.bench.overhead import interleaved_cpu, ratio_quartiles
from tmebox.toolchain import nopmerge, unit

# feature -> how to switch it off for one build
FEATURES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "nopmerge": lambda: mock.patch.object(nopmerge, "merge_object",
                                          lambda path: nopmerge.MergeStats()),
    "callpad": lambda: mock.patch.object(unit, "_assemble_aligned_calls",
                                         lambda *args: False),
}


def builds(name: str, feature: str, keep: Path) -> dict[str, Path]:
    w = workloads.WORKLOADS[name]
    on = build.build(w, rebuild=True)
    paths = {"baseline": keep / "baseline", "on": keep / "on.box", "off": keep / "off.box"}
    shutil.copy(on.paths["baseline"], paths["baseline"])
    shutil.copy(on.paths["code+data"], paths["on"])
    with FEATURES[feature]():
        off = build.build(w, rebuild=True)
    shutil.copy(off.paths["code+data"], paths["off"])
    build.build(w, rebuild=True)  # leave the cache as the current toolchain makes it
    return paths


def text_stats(image: Path) -> tuple[int, int, int]:
    """(.text bytes, nop bytes in it, calls in it)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    with image.open("rb") as f:
        data = ELFFile(f).get_section_by_name(".text").data()
    nops = calls = 0
    for _, size, mnemonic, _ in md.disasm_lite(data, 0):
        nops += size if mnemonic.startswith("nop") else 0
        calls += mnemonic == "call"
    return len(data), nops, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--feature", required=True, choices=sorted(FEATURES))
    ap.add_argument("--workload", default="lua", choices=sorted(workloads.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    scale = workloads.WORKLOADS[args.workload].scale
    with tempfile.TemporaryDirectory() as tmp:
        paths = builds(args.workload, args.feature, Path(tmp))
        for v in ("off", "on"):
            size, nops, calls = text_stats(paths[v])
            print(f"  {args.feature} {v:3s} .text {size} bytes, {nops} nop bytes, {calls} calls")
        cpu = interleaved_cpu(paths, scale, args.rounds)
    print(f"{args.workload}: {args.rounds} rounds, baseline median "
          f"{statistics.median(cpu['baseline']) / 1e6:.1f} ms CPU; load {os.getloadavg()}")
    for v in ("off", "on"):
        q1, med, q3 = ratio_quartiles(cpu, v)
        print(f"  code+data, {args.feature} {v:3s} {med:+6.1f} %  [{q1:+.1f}, {q3:+.1f}]")
    ratios = sorted(a / b for a, b in zip(cpu["on"], cpu["off"], strict=True))
    print(f"  on / off per round: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
