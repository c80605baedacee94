"""Cost of entering a sandbox: native round trip, sb.call from Python, spawn and destroy.

Measured interleaved over --rounds rounds, medians reported, each next to a baseline
measured in the same round:

- native round trip: `tmebox_call` of an exported `long nop(long)` in a C loop (host ->
  sandbox -> `__tmebox_rt_exit` -> host), vs. the two `wrgsbase` it cannot avoid;
- sb.call from Python: `sb.call("nop", 1)`, vs. one cffi call of an empty C function with
  the same 10 arguments the fast path passes, and vs. an empty Python function call;
- a runtime call: `getpid()` in a loop inside the sandbox (exit to the host, Python's
  runtime-call dispatch, resume);
- spawn (map the window, copy and relocate data, run musl's start-up up to the park) and
  destroy of the tenant image, into fresh windows and into warm ones (a destroyed
  sandbox's window still mapping the same image).

Usage: bench/runtime_calls.py [--rounds N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import tmebox
from tmebox.runtime.native import windows as nb
from tmebox.runtime.native.helper import lib

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

N_NATIVE = 1_000_000
N_PY = 100_000
N_RTCALL = 20_000
N_SPAWN = 200  # <= WARM_WINDOWS, so the warm case reuses every window


def empty(a, b):
    return None


def measure_round(sb, rt, img) -> dict[str, float]:
    eng = sb._engine
    rip = sb._lookup("nop")
    r: dict[str, float] = {}
    r["native round trip (ns)"] = lib.tmebox_bench_roundtrip(
        eng.ctx, rip, sb._call_rsp, sb._ret, N_NATIVE) / N_NATIVE
    r["  baseline: 2x wrgsbase (ns)"] = lib.tmebox_bench_gsbase(N_NATIVE) / N_NATIVE

    call = sb.call
    t = time.perf_counter_ns()
    for _ in range(N_PY):
        call("nop", 1)
    r["sb.call from Python (ns)"] = (time.perf_counter_ns() - t) / N_PY
    nop = lib.tmebox_nop
    t = time.perf_counter_ns()
    for _ in range(N_PY):
        nop(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    r["  baseline: empty cffi call, 10 args (ns)"] = (time.perf_counter_ns() - t) / N_PY
    t = time.perf_counter_ns()
    for _ in range(N_PY):
        empty("nop", 1)
    r["  baseline: empty Python call (ns)"] = (time.perf_counter_ns() - t) / N_PY

    t = time.perf_counter_ns()
    assert sb.call("getpids", N_RTCALL) == N_RTCALL
    r["runtime call from the sandbox: getpid (ns)"] = (time.perf_counter_ns() - t) / N_RTCALL

    for label, warm in (("fresh window", 0), ("warm window", nb.WARM_WINDOWS)):
        saved, nb.WARM_WINDOWS = nb.WARM_WINDOWS, warm
        try:
            for s in [rt.spawn(img) for _ in range(N_SPAWN)]:
                s.destroy()  # leaves N_SPAWN warm windows (or none)
            t = time.perf_counter_ns()
            sbs = [rt.spawn(img) for _ in range(N_SPAWN)]
            t1 = time.perf_counter_ns()
            for s in sbs:
                s.destroy()
            t2 = time.perf_counter_ns()
        finally:
            nb.WARM_WINDOWS = saved
        r[f"spawn, {label} (us)"] = (t1 - t) / N_SPAWN / 1000
        r[f"destroy, {label} (us)"] = (t2 - t1) / N_SPAWN / 1000
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    image = tenant_image()
    with tmebox.Runtime(max_sandboxes=N_SPAWN + 8) as rt:
        img = rt.load(image)
        sb = rt.spawn(img)
        assert sb.call("nop", 41) == 41
        rounds = [measure_round(sb, rt, img) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    med["ratio sb.call / empty cffi call"] = (med["sb.call from Python (ns)"]
                                             / med["  baseline: empty cffi call, 10 args (ns)"])
    med["ratio native round trip / 2x wrgsbase"] = (med["native round trip (ns)"]
                                                   / med["  baseline: 2x wrgsbase (ns)"])
    print(f"runtime calls: {args.rounds} interleaved rounds, medians")
    for k, v in med.items():
        print(f"  {k:45s} {v:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "median": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
