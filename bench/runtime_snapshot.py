"""Spawning from a snapshot against a warm spawn, in the same rounds (docs/runtime.md,
"Snapshots").

The tenant's init touches about 64 KiB (a heap table and its data); the snapshot is taken
after it. Each round spawns a batch of sandboxes both ways into warm windows and destroys
them; only the spawns are timed, and then each spawn with its first call. Target: a spawn
from the snapshot <= 1/3 of a warm spawn.

Usage: bench/runtime_snapshot.py [--rounds N] [--batch N] [--backend native|tme] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import tmebox

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

TENANT_C = r"""
#include <stdlib.h>
#include <string.h>
static char *table;
long init(long n) { table = malloc(n); memset(table, 1, n); return 0; }
long get(long i) { return table[i]; }
long nop(long i) { return i; }
int main(void) { return 0; }
"""
TOUCH = 56 << 10  # plus the stack, data and libc's pages: about 64 KiB


def spawn_batch(rt, what, n: int, first_call: bool = False) -> float:
    """Mean seconds per spawn (and, with first_call, the first call that follows it: a
    spawn leaves some work to that call, docs/runtime.md "Snapshots")."""
    t = time.perf_counter()
    if first_call:
        sbs = []
        for _ in range(n):
            sb = rt.spawn(what)
            sb.call("nop", 0)
            sbs.append(sb)
    else:
        sbs = [rt.spawn(what) for _ in range(n)]
    dt = time.perf_counter() - t
    for sb in sbs:
        sb.destroy()
    return dt / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--backend", default="native", choices=["native", "tme"])
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args()
    with tmebox.Runtime(backend=a.backend, max_sandboxes=a.batch + 1) as rt:
        img = rt.load(tenant_image(TENANT_C, "runtime_snapshot"))
        src = rt.spawn(img)
        src.call("init", TOUCH)
        snap = src.snapshot()
        with rt.spawn(snap) as probe:
            assert probe.call("get", TOUCH - 1) == 1
        for what in (img, snap):  # warm the windows and the caches
            spawn_batch(rt, what, a.batch)
        times: dict[tuple[object, bool], list[float]] = {}
        for _ in range(a.rounds):
            for called in (False, True):
                for what in (img, snap):
                    times.setdefault((what, called), []).append(
                        spawn_batch(rt, what, a.batch, called))
    w, s, wc, sc = (statistics.median(times[k]) for k in
                    ((img, False), (snap, False), (img, True), (snap, True)))
    result = {"backend": a.backend, "rounds": a.rounds, "batch": a.batch,
              "snapshot_bytes": snap.size, "warm_spawn_us": w * 1e6,
              "snapshot_spawn_us": s * 1e6, "ratio": s / w,
              "warm_spawn_call_us": wc * 1e6, "snapshot_spawn_call_us": sc * 1e6,
              "ratio_with_call": sc / wc}
    print(f"snapshot of {snap.size / 1024:.0f} KiB; medians of {a.rounds} rounds x "
          f"{a.batch} spawns ({a.backend})")
    print(f"  warm spawn          {w * 1e6:8.1f} us")
    print(f"  spawn from snapshot {s * 1e6:8.1f} us  = {s / w:.2f} x warm (target <= 0.33)")
    print(f"  the same, each with its first call: {wc * 1e6:.1f} us and {sc * 1e6:.1f} us "
          f"= {sc / wc:.2f} x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
