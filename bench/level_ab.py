"""What x86-64-v3 buys: each workload's code+data image built for x86-64 and for x86-64-v3
(`tmebox cc -march=...`; the sandbox libc is the same x86-64 build in both), run interleaved
with the baseline (plain musl, x86-64) in one process on one CPU; median CPU-time ratios to
the baseline and v3 over x86-64 per round, with quartiles (docs/evaluation.md "CPU levels").

    .venv/bin/python bench/level_ab.py --rounds 11 [--workload zlib ...]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from tmebox.bench import build, workloads
from tmebox.bench.overhead import interleaved_cpu, ratio_quartiles
from tmebox.toolchain import cc
from tmebox.trusted.cpu import host_level
from tmebox.trusted.image import CpuLevel


def builds(name: str, keep: Path) -> dict[str, Path]:
    w = workloads.WORKLOADS[name]
    cached = build.build(w)
    src = build.sources(w)
    paths = {"baseline": keep / "baseline", "x86-64": keep / "base.box", "v3": keep / "v3.box"}
    shutil.copy(cached.paths["baseline"], paths["baseline"])
    shutil.copy(cached.paths["code+data"], paths["x86-64"])
    cc.build(src.files, paths["v3"], isolation="code+data", opt=build.OPT,
             include_dirs=src.include_dirs, defines=src.defines, libs=["m"],
             level=CpuLevel.V3)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", action="append", choices=sorted(workloads.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    if host_level() is not CpuLevel.V3:
        raise SystemExit("this machine's CPU is not x86-64-v3")
    gains = []
    print(f"{'workload':10s} {'x86-64':>8s} {'v3':>8s} {'v3/x86-64':>10s}  (CPU time, medians)")
    for name in args.workload or sorted(workloads.WORKLOADS):
        with tempfile.TemporaryDirectory() as tmp:
            paths = builds(name, Path(tmp))
            cpu = interleaved_cpu(paths, workloads.WORKLOADS[name].scale, args.rounds)
        base = ratio_quartiles(cpu, "x86-64")[1]
        v3 = ratio_quartiles(cpu, "v3")[1]
        per_round = sorted(a / b for a, b in zip(cpu["v3"], cpu["x86-64"], strict=True))
        q1, med, q3 = statistics.quantiles(per_round, n=4)
        gains.append(med)
        print(f"{name:10s} {base:+7.1f}% {v3:+7.1f}% {med:10.3f}  [{q1:.3f}, {q3:.3f}]",
              flush=True)
    geo = math.exp(sum(map(math.log, gains)) / len(gains))
    print(f"geomean v3/x86-64: {geo:.3f} over {len(gains)} workloads, {args.rounds} rounds; "
          f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
