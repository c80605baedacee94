"""Cost of typed calls and host functions (docs/embedding.md), against baselines measured in
the same rounds.

- typed host -> guest: `sb.call("nop", 1)` of an `int64_t nop(int64_t)` export, vs. an
  empty Python function call with the same arguments (target: <= 5x);
- with a double: `sb.call("fnop", 1.0)`, through the call thunk;
- guest -> host -> guest: a guest loop calling an empty Python host function N times,
  per call, vs. `sb.call("nop", 1)` (target: <= 2x);
- the same with a host function written in C (`CHostFunction`, returning its argument),
  vs. the native host -> guest round trip of a C loop (target: <= 2x).

Interleaved over --rounds rounds; medians and ratios of medians.

Usage: bench/runtime_host_calls.py [--rounds N] [--backend native|tme] [--json OUT]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import statistics
import sys
import time

import tmebox

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

PLUGIN_C = r"""
#include <tmebox.h>
TMEBOX_IMPORT int64_t host_nop(int64_t a);
TMEBOX_IMPORT int64_t host_cnop(int64_t a);
int64_t nop(int64_t a) { return a; }
int64_t loop_chost(int64_t n) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += host_cnop(i);
    return s;
}
double fnop(double x) { return x; }
int64_t loop_host(int64_t n) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += host_nop(i);
    return s;
}
int main(void) { return 0; }
"""
N_PY = 50_000
N_HOST = 20_000
N_C = 200_000


def empty(name, a):
    return None


def measure_round(sb) -> dict[str, float]:
    r: dict[str, float] = {}
    t = time.perf_counter_ns()
    for _ in range(N_PY):
        empty("nop", 1)
    r["baseline: empty Python call (ns)"] = (time.perf_counter_ns() - t) / N_PY
    call = sb.call
    t = time.perf_counter_ns()
    for _ in range(N_PY):
        call("nop", 1)
    r["typed sb.call, int64 (ns)"] = (time.perf_counter_ns() - t) / N_PY
    t = time.perf_counter_ns()
    for _ in range(N_PY // 5):
        call("fnop", 1.0)
    r["typed sb.call, double (ns)"] = (time.perf_counter_ns() - t) / (N_PY // 5)
    t = time.perf_counter_ns()
    assert call("loop_host", N_HOST) == N_HOST * (N_HOST - 1) // 2
    r["guest -> Python host function -> guest (ns)"] = (time.perf_counter_ns() - t) / N_HOST
    if hasattr(sb._engine, "ctx"):  # native
        from tmebox.runtime.native.helper import lib

        t = time.perf_counter_ns()
        assert call("loop_chost", N_C) == N_C * (N_C - 1) // 2
        r["guest -> C host function -> guest (ns)"] = (time.perf_counter_ns() - t) / N_C
        r["baseline: native host -> guest round trip (ns)"] = lib.tmebox_bench_roundtrip(
            sb._engine.ctx, sb._lookup("nop"), sb._call_rsp, sb._ret, N_C) / N_C
    return r


def c_identity() -> tuple[mmap.mmap, tmebox.CHostFunction]:
    """A host function in C: int64_t f(const struct tmebox_caller *, int64_t a) { return a; }"""
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(bytes.fromhex("4889f0c3"))  # mov %rsi, %rax; ret
    return page, tmebox.CHostFunction(ctypes.addressof(ctypes.c_char.from_buffer(page)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--backend", choices=("native", "tme"), default="native")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    image = tenant_image(PLUGIN_C, "host_calls_tenant")
    page, cnop = c_identity()
    with tmebox.Runtime(backend=args.backend, max_sandboxes=4) as rt:
        rt.define("host_nop", lambda caller, a: a)
        # the tme backend cannot run C host functions: a Python one stands in
        rt.define("host_cnop", cnop if args.backend == "native" else (lambda caller, a: a))
        sb = rt.spawn(rt.load(image))
        rounds = [measure_round(sb) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    med["ratio typed sb.call / empty Python call"] = (med["typed sb.call, int64 (ns)"]
                                                    / med["baseline: empty Python call (ns)"])
    med["ratio guest->host->guest / typed sb.call"] = (
        med["guest -> Python host function -> guest (ns)"] / med["typed sb.call, int64 (ns)"])
    if "guest -> C host function -> guest (ns)" in med:
        med["ratio guest->C host->guest / native round trip"] = (
            med["guest -> C host function -> guest (ns)"]
            / med["baseline: native host -> guest round trip (ns)"])
    print(f"host calls ({args.backend}): {args.rounds} interleaved rounds, medians")
    for k, v in med.items():
        print(f"  {k:48s} {v:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "median": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
