"""A/B of call padding (docs/toolchain.md): one workload's code+data build with call groups
padded by the assembler to end their bundle ("aligned") and as whole bundles ("fixed").

Builds the workload the way `tmebox bench` does, twice (the second time with
`cc._assemble_aligned_calls` switched off, so every call group of the workload's own code
is 32 bytes; the sandbox libc is the cached one, aligned, in both), counts the nop bytes
of each image's .text, then runs baseline, aligned and fixed interleaved in one process
on one CPU and prints median CPU-time overheads with the quartiles of the per-round ratios.

    .venv/bin/python bench/callpad.py --workload lua --rounds 31
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import capstone
from elftools.elf.elffile import ELFFile

from tmebox.bench import build, stats, workloads
from tmebox.bench.overhead import BaselineRunner, SandboxRunner
from tmebox.runtime.api import Runtime
from tmebox.toolchain import cc


def builds(name: str, keep: Path) -> dict[str, Path]:
    w = workloads.WORKLOADS[name]
    aligned = build.build(w, rebuild=True)
    paths = {"baseline": keep / "baseline", "aligned": keep / "aligned.box"}
    shutil.copy(aligned.paths["baseline"], paths["baseline"])
    shutil.copy(aligned.paths["code+data"], paths["aligned"])
    real = cc._assemble_aligned_calls
    cc._assemble_aligned_calls = lambda asm, obj, source: False
    try:
        fixed = build.build(w, rebuild=True)
    finally:
        cc._assemble_aligned_calls = real
    paths["fixed"] = keep / "fixed.box"
    shutil.copy(fixed.paths["code+data"], paths["fixed"])
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
    ap.add_argument("--workload", default="lua", choices=sorted(workloads.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    scale = workloads.WORKLOADS[args.workload].scale
    with tempfile.TemporaryDirectory() as tmp:
        paths = builds(args.workload, Path(tmp))
        for v in ("fixed", "aligned"):
            size, nops, calls = text_stats(paths[v])
            print(f"  {v:8s} .text {size} bytes, {nops} nop bytes, {calls} calls")
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
    for v in ("fixed", "aligned"):
        ratios = sorted(a / b for a, b in zip(cpu[v], cpu["baseline"], strict=True))
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        print(f"  code+data {v:8s} {100 * (med - 1):+6.1f} %  "
              f"[{100 * (q1 - 1):+.1f}, {100 * (q3 - 1):+.1f}]")
    ratios = sorted(a / b for a, b in zip(cpu["aligned"], cpu["fixed"], strict=True))
    print(f"  aligned / fixed per round: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
