"""A/B of one toolchain feature on workloads' sandbox builds (docs/toolchain.md).

Features: `nopmerge` (one-byte nop runs merged into multi-byte nops), `callpad` (call
groups padded by the assembler to end their bundle, instead of whole 32-byte groups) and
`loopalign` (short loops padded to lie inside a 64-byte line, unit.FIT_LOOPS;
docs/evaluation.md).
Builds each workload the way `tmebox bench` does (or takes its cached builds) and once more
with the feature switched off for the workload's own code (the sandbox libc is the same),
counts the nop bytes of each image's .text and its short innermost loops across a 64-byte
line, then runs baseline, on and off of each mode (`--mode`, code+data unless given)
interleaved in one process on one CPU and prints median CPU-time overheads with the
quartiles of the per-round ratios, the per-round ratio of the two modes if two are given,
and the geomean over the workloads of on / off.

    .venv/bin/python bench/toolchain_ab.py --feature callpad --workload lua --rounds 31
    .venv/bin/python bench/toolchain_ab.py --feature loopalign --mode data --mode code+data
"""

from __future__ import annotations

import argparse
import contextlib
import math
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
from tmebox.toolchain import loops, nopmerge, unit
from tmebox.trusted import abi

# feature -> how to switch it off for one build
FEATURES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "nopmerge": lambda: mock.patch.object(nopmerge, "merge_object",
                                          lambda path: nopmerge.MergeStats()),
    "callpad": lambda: mock.patch.object(unit, "_assemble_aligned_calls",
                                         lambda *args: None),
    "loopalign": lambda: mock.patch.object(unit, "FIT_LOOPS", False),
}


def builds(name: str, feature: str, modes: list[str], keep: Path) -> dict[str, Path]:
    """baseline, then "MODE on" and "MODE off" of each mode."""
    w = workloads.WORKLOADS[name]
    on = build.build(w)
    # (built under keep: the cache keeps what the current toolchain makes)
    with FEATURES[feature](), mock.patch.object(build, "build_cache", lambda: keep / "off"):
        off = build.build(w)
    paths = {build.BASELINE: keep / build.BASELINE}
    shutil.copy(on.paths[build.BASELINE], paths[build.BASELINE])
    for mode in modes:
        for state, built in (("on", on), ("off", off)):
            v = f"{mode} {state}"
            paths[v] = keep / f"{mode.replace('+', '_')}-{state}.box"
            shutil.copy(built.paths[mode], paths[v])
    return paths


def text_stats(image: Path) -> tuple[int, int, int, int]:
    """(.text bytes, nop bytes in it, calls in it, short innermost loops across a line)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    with image.open("rb") as f:
        data = ELFFile(f).get_section_by_name(".text").data()
    nops = calls = 0
    for _, size, mnemonic, _ in md.disasm_lite(data, 0):
        nops += size if mnemonic.startswith("nop") else 0
        calls += mnemonic == "call"
    return len(data), nops, calls, len(loops.straddling(image))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--feature", required=True, choices=sorted(FEATURES))
    ap.add_argument("--workload", action="append", choices=sorted(workloads.WORKLOADS),
                    help="repeatable; default lua")
    ap.add_argument("--mode", action="append", choices=abi.ISOLATION_MODES,
                    help="repeatable; default code+data")
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    modes = args.mode or ["code+data"]
    gains: dict[str, list[float]] = {m: [] for m in modes}
    for name in args.workload or ["lua"]:
        with tempfile.TemporaryDirectory() as tmp:
            paths = builds(name, args.feature, modes, Path(tmp))
            for v in paths:
                if v != build.BASELINE:
                    size, nops, calls, across = text_stats(paths[v])
                    print(f"  {name} {v:13s} .text {size} bytes, {nops} nop bytes, "
                          f"{calls} calls, {across} short loops across a line")
            cpu = interleaved_cpu(paths, workloads.WORKLOADS[name].scale, args.rounds)
        print(f"{name}: {args.rounds} rounds, baseline median "
              f"{statistics.median(cpu[build.BASELINE]) / 1e6:.1f} ms CPU; "
              f"load {os.getloadavg()}")
        for mode in modes:
            for state in ("off", "on"):
                q1, med, q3 = ratio_quartiles(cpu, f"{mode} {state}")
                print(f"  {mode:9s} {args.feature} {state:3s} {med:+6.1f} %  "
                      f"[{q1:+.1f}, {q3:+.1f}]")
            ratios = sorted(a / b for a, b in zip(cpu[f"{mode} on"], cpu[f"{mode} off"],
                                                  strict=True))
            gains[mode].append(statistics.median(ratios))
            print(f"  {mode:9s} on / off per round: median {gains[mode][-1]:.3f}")
        if len(modes) == 2:
            for state in ("off", "on"):
                a, b = (cpu[f"{mode} {state}"] for mode in modes)
                ratios = sorted(x / y for x, y in zip(a, b, strict=True))
                print(f"  {state:3s}: {modes[0]} / {modes[1]} per round: median "
                      f"{statistics.median(ratios):.3f}")
        print(flush=True)
    for mode, g in gains.items():
        geo = math.exp(sum(map(math.log, g)) / len(g))
        print(f"geomean {mode} on / off: {geo:.3f} over {len(g)} workloads")


if __name__ == "__main__":
    main()
