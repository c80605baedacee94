"""Spawn time as the window pool grows: spawn up to --counts sandboxes without reserving first.

`tmebox bench density` spawns this way, so every window comes from a growth step of the
pool; bench/runtime_density.py reserves all windows before timing and does not see it.
Prints the mean spawn time of the sandboxes added since the previous count, then the
mean destroy time (in spawn order). Needs vm.max_map_count for the largest count (see
bench/runtime_density.py).

Usage: bench/runtime_pool_growth.py [--counts 1000,10000,20000,32000]
"""

from __future__ import annotations

import argparse
import sys
import time

import tmebox
from tmebox.bench.density import spawn_milestones
from tmebox.errors import OutOfSandboxes

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _runtime_common import tenant_image  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1000,10000,20000,32000")
    args = ap.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    image = tenant_image()
    try:
        rt = tmebox.Runtime(max_sandboxes=counts[-1])
    except OutOfSandboxes as e:
        print(f"runtime_pool_growth: {e}", file=sys.stderr)
        return 1
    with rt:
        img = rt.load(image)
        rt.spawn(img).destroy()  # first-touch costs of the image and the runtime
        sbs: list = []
        for target, spawned, spawn in spawn_milestones(rt, img, counts):
            sbs = spawned
            print(f"  spawn up to {target:6d}: {spawn * 1e6:8.1f} us", flush=True)
        t0 = time.perf_counter()
        for sb in sbs:
            sb.destroy()
        print(f"  destroy all {len(sbs):6d}: {(time.perf_counter() - t0) / len(sbs) * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
