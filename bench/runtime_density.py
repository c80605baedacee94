"""Sandbox density: spawn --count sandboxes at once, each having run code; memory per sandbox.

Every sandbox runs musl's start-up (spawn) and one call that writes a page of its own
heap. Memory is read from /proc/self/status before and after: VmRSS (resident pages)
plus VmPTE (page tables), divided by the count. Then all are destroyed in random order
and the process's mapping count must be back where it started.

32,000 windows need about 100,000 kernel mappings: as root the benchmark raises
vm.max_map_count itself (and says so); otherwise it stops with the sysctl to run.

Usage: bench/runtime_density.py [--count N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import tmebox
from tmebox.errors import OutOfSandboxes
from tmebox.runtime import layout
from tmebox.runtime.native.windows import MAP_COUNT_SLACK, MAPS_PER_WINDOW, POOL

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402

MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def window_mappings() -> int:
    """Kernel mappings inside reserved windows (host mappings elsewhere come and go)."""
    n = 0
    for line in layout.read_host_maps():
        lo = int(line.split("-", 1)[0], 16)
        n += (lo >> 32) in POOL.windows
    return n


def ensure_map_count(count: int) -> None:
    need = len(layout.read_host_maps()) + MAPS_PER_WINDOW * count + MAP_COUNT_SLACK
    if int(MAX_MAP_COUNT.read_text()) < need:
        try:
            MAX_MAP_COUNT.write_text(str(need))
            print(f"raised vm.max_map_count to {need}")
        except OSError:
            pass  # Runtime() below explains what to run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=32_000)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    image = tenant_image()
    ensure_map_count(args.count)
    try:
        rt = tmebox.Runtime(max_sandboxes=args.count)
    except OutOfSandboxes as e:
        print(f"runtime_density: {e}", file=sys.stderr)
        return 1
    with rt:
        img = rt.load(image)
        POOL.ensure(args.count)
        maps0 = window_mappings()
        warm = rt.spawn(img)  # first-touch costs of the image and the runtime itself
        warm.call("touch", warm.alloc(4096), 4096)
        warm.destroy()
        rss0, pte0 = status_kib("VmRSS"), status_kib("VmPTE")
        t = time.perf_counter()
        sbs = []
        for _ in range(args.count):
            sb = rt.spawn(img)
            sb.call("touch", sb.alloc(4096), 4096)
            sbs.append(sb)
        spawn_s = time.perf_counter() - t
        rss1, pte1 = status_kib("VmRSS"), status_kib("VmPTE")
        maps1 = window_mappings()
        random.Random(1).shuffle(sbs)
        t = time.perf_counter()
        for sb in sbs:
            sb.destroy()
        destroy_s = time.perf_counter() - t
    maps2 = window_mappings()  # the Runtime is closed: its image's warm windows are back
    n = args.count
    res = {
        "sandboxes": n,
        "rss_per_sandbox_kib": (rss1 - rss0) / n,
        "pte_per_sandbox_kib": (pte1 - pte0) / n,
        "total_per_sandbox_kib": (rss1 - rss0 + pte1 - pte0) / n,
        "spawn_and_call_us": spawn_s / n * 1e6,
        "destroy_us": destroy_s / n * 1e6,
        "mappings_per_sandbox": (maps1 - maps0) / n,
        "mappings_leaked": maps2 - maps0,
    }
    print(f"runtime density: {n} sandboxes alive at once, each ran code")
    for k, v in res.items():
        print(f"  {k:28s} {v:12.2f}" if isinstance(v, float) else f"  {k:28s} {v:12d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["mappings_leaked"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
