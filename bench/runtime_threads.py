"""Calls from several threads into different sandboxes (docs/embedding.md, "What it costs").

Each thread has its own sandbox and calls `spin(n)` in a loop; the throughput of k threads
(calls per second, all threads together) is compared with one thread's, measured in the same
round. Call sizes: `nop` (the shortest call there is), and spins of about 5 and 50 us.
Targets on this 2-core machine: two threads >= 1.8x one thread for calls of >= 5 us, and
for tiny calls more threads are never slower than one (ratio >= 0.95).

Interleaved over --rounds rounds; medians and ratios of medians.

Usage: bench/runtime_threads.py [--rounds N] [--seconds S] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import tmebox

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

SPIN_C = r"""
#include <stdint.h>
int64_t nop(int64_t a) { return a; }
int64_t spin(int64_t n) {
    volatile int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += i;
    return s;
}
int main(void) { return 0; }
"""
THREADS = (1, 2, 4)


def spins_for(sb: tmebox.Sandbox, micros: float) -> int:
    """The spin count of a call of about `micros` microseconds on this machine, now."""
    n = 1000
    while True:
        for _ in range(20):  # the C path, and its average, settled
            sb.call("spin", n)
        t = time.perf_counter()
        for _ in range(100):
            sb.call("spin", n)
        per = (time.perf_counter() - t) / 100 * 1e6
        if per > micros / 2:
            return max(1, int(n * micros / per))
        n *= 2


def throughput(sbs: list[tmebox.Sandbox], name: str, arg: int, seconds: float) -> float:
    """Calls per second of len(sbs) threads, each calling its own sandbox for `seconds`."""
    counts = [0] * len(sbs)
    start = threading.Barrier(len(sbs) + 1)
    deadline = [0.0]

    def work(i: int) -> None:
        call, n = sbs[i].call, 0
        start.wait()
        while time.perf_counter() < deadline[0]:
            for _ in range(16):
                call(name, arg)
            n += 16
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sbs))]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="per measurement")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    image = tenant_image(SPIN_C, "threads_tenant")
    rows: list[dict[str, float]] = []
    with tmebox.Runtime(max_sandboxes=max(THREADS) + 1) as rt:
        img = rt.load(image)
        sbs = [rt.spawn(img) for _ in range(max(THREADS))]
        sizes = {"nop": ("nop", 1), "5 us": ("spin", spins_for(sbs[0], 5)),
                 "50 us": ("spin", spins_for(sbs[0], 50))}
        for sb in sbs:  # every sandbox has seen each call (its C path and its average)
            for name, arg in sizes.values():
                for _ in range(50):
                    sb.call(name, arg)
        for _ in range(args.rounds):
            r = {}
            for size, (name, arg) in sizes.items():
                for k in THREADS:
                    r[f"{size}, {k} thread(s) (calls/s)"] = throughput(sbs[:k], name, arg,
                                                                       args.seconds)
            rows.append(r)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    for size in sizes:
        one = med[f"{size}, 1 thread(s) (calls/s)"]
        for k in THREADS[1:]:
            med[f"ratio {size}: {k} threads / 1"] = med[f"{size}, {k} thread(s) (calls/s)"] / one
    print(f"threads: {args.rounds} interleaved rounds of {args.seconds} s, medians")
    for k, v in med.items():
        print(f"  {k:40s} {v:14.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rows, "median": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
