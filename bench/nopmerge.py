"""A/B of the nop merge (docs/toolchain.md): one workload's code+data build with and without it.

Builds the workload the way `tmebox bench` does, twice (the second time with
`nopmerge.merge_object` switched off; the sandbox libc is the cached, merged one in both),
then runs baseline, merged and unmerged interleaved in one process on one CPU, and prints
median CPU-time overheads with the quartiles of the per-round ratios.

    .venv/bin/python bench/nopmerge.py --workload lua --rounds 31
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from tmebox.bench import build, stats, workloads
from tmebox.bench.overhead import BaselineRunner, SandboxRunner
from tmebox.runtime.api import Runtime
from tmebox.toolchain import nopmerge


def builds(name: str, keep: Path) -> dict[str, Path]:
    w = workloads.WORKLOADS[name]
    merged = build.build(w, rebuild=True)
    paths = {"baseline": keep / "baseline", "merged": keep / "merged.box"}
    shutil.copy(merged.paths["baseline"], paths["baseline"])
    shutil.copy(merged.paths["code+data"], paths["merged"])
    real = nopmerge.merge_object
    nopmerge.merge_object = lambda path: nopmerge.MergeStats()
    try:
        plain = build.build(w, rebuild=True)
    finally:
        nopmerge.merge_object = real
    paths["unmerged"] = keep / "unmerged.box"
    shutil.copy(plain.paths["code+data"], paths["unmerged"])
    build.build(w, rebuild=True)  # leave the cache as the merging toolchain makes it
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="lua", choices=sorted(workloads.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    scale = workloads.WORKLOADS[args.workload].scale
    with tempfile.TemporaryDirectory() as tmp:
        paths = builds(args.workload, Path(tmp))
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(allowed)})  # vCPUs differ in speed: one for all
        cpu: dict[str, list[int]] = {v: [] for v in paths}
        with Runtime(backend="native", max_sandboxes=4) as rt:
            runners = {v: BaselineRunner(p, scale) if v == "baseline" else
                       SandboxRunner(rt, p, scale) for v, p in paths.items()}
            try:
                sums = {v: r.run_once()[2] for v, r in runners.items()}  # warm-up
                if len(set(sums.values())) != 1:
                    raise SystemExit(f"checksums differ: {sums}")
                for _, v in stats.interleave(list(paths), args.rounds):
                    cpu[v].append(runners[v].run_once()[1])
            finally:
                for r in runners.values():
                    r.close()
    print(f"{args.workload}: {args.rounds} rounds, baseline median "
          f"{statistics.median(cpu['baseline']) / 1e6:.1f} ms CPU; load {os.getloadavg()}")
    for v in ("unmerged", "merged"):
        ratios = sorted(a / b for a, b in zip(cpu[v], cpu["baseline"], strict=True))
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        print(f"  code+data {v:9s} {100 * (med - 1):+6.1f} %  "
              f"[{100 * (q1 - 1):+.1f}, {100 * (q3 - 1):+.1f}]")
    ratios = sorted(a / b for a, b in zip(cpu["merged"], cpu["unmerged"], strict=True))
    print(f"  merged / unmerged per round: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
