"""Density: spawn time and resident memory per sandbox as the count grows.

Runs in a child interpreter (`python -m tmebox.bench.density`) so that the
memory it reports is not mixed with the rest of the evaluation's and the
windows it reserves are given back when it ends. The child prints one JSON
line per milestone; the parent turns them into rows.
Memory is read from /proc/self/status (VmRSS, VmPTE) before the first spawn
and at every milestone; per-sandbox figures are the growth divided by the count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmebox.bench.errors import BenchError

FULL_COUNTS = (1, 10, 100, 1000, 10000, 32000)
QUICK_COUNTS = (1, 10, 100)
MAP_COUNT_FILE = Path("/proc/sys/vm/max_map_count")


@dataclass(frozen=True)
class DensityPoint:
    count: int
    spawn_us: float  # mean spawn time of the sandboxes added since the previous milestone
    call_us: float  # mean time of one noop call to every live sandbox, in turn
    rss_kib_per_sandbox: float
    pte_kib_per_sandbox: float
    rss_mib: float  # whole process
    pte_mib: float


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmPTE"):
            out[key] = int(rest.split()[0])
    return out


def maps_needed(count: int) -> int:
    from tmebox.runtime import layout as lay
    from tmebox.runtime.native.windows import MAP_COUNT_SLACK, MAPS_PER_WINDOW

    return len(lay.read_host_maps()) + MAPS_PER_WINDOW * count + MAP_COUNT_SLACK


def fit_counts(counts: tuple[int, ...], raise_limit: bool = True) -> tuple[list[int], str]:
    """The counts vm.max_map_count allows, raising it first if we are root.

    Returns the counts to run and a note for the report (empty if nothing changed).
    """
    from tmebox.runtime.native.windows import MAP_COUNT_SLACK, MAPS_PER_WINDOW

    need = maps_needed(max(counts))
    limit = int(MAP_COUNT_FILE.read_text())
    if need <= limit:
        return list(counts), ""
    if raise_limit and os.geteuid() == 0:
        try:
            MAP_COUNT_FILE.write_text(f"{need}\n")
            return list(counts), f"raised vm.max_map_count from {limit} to {need}"
        except OSError as e:
            note = f"could not raise vm.max_map_count ({e.strerror})"
    else:
        note = f"not root: vm.max_map_count stays {limit}"
    from tmebox.runtime import layout as lay

    room = (limit - len(lay.read_host_maps()) - MAP_COUNT_SLACK) // MAPS_PER_WINDOW
    fitting = [c for c in counts if c <= room]
    return fitting, (f"{note}; stopped at {max(fitting) if fitting else 0} sandboxes "
                     f"({max(counts)} need vm.max_map_count >= {need}: "
                     f"`sysctl -w vm.max_map_count={need}`)")


def spawn_milestones(rt: Any, img: Any, counts: list[int]
                     ) -> Iterator[tuple[int, list[Any], float]]:
    """Spawn sandboxes of img up to each count in turn (ascending); yields the count, the
    sandboxes so far and the mean seconds per spawn since the previous count."""
    sbs: list[Any] = []
    for target in counts:
        t0 = time.perf_counter()
        added = target - len(sbs)
        while len(sbs) < target:
            sbs.append(rt.spawn(img))
        yield target, sbs, (time.perf_counter() - t0) / added


def _child(image: Path, counts: list[int]) -> None:
    from tmebox.runtime.api import Runtime

    with Runtime(backend="native", max_sandboxes=max(counts)) as rt:
        img = rt.load(image)
        # One sandbox spawned and destroyed first: the one-time costs (imports, the
        # image's code memfd, the window pool) are then not charged to the first milestone.
        rt.spawn(img).destroy()
        before = _status()
        for target, sbs, spawn in spawn_milestones(rt, img, counts):
            t0 = time.perf_counter()
            for i, sb in enumerate(sbs):
                if sb.call("noop", i) != i + 1:
                    raise BenchError(f"sandbox {i} of {target} answered noop wrongly")
            call = (time.perf_counter() - t0) / target
            now = _status()
            rss, pte = now["VmRSS"] - before["VmRSS"], now["VmPTE"] - before["VmPTE"]
            print(json.dumps({"count": target, "spawn_us": spawn * 1e6, "call_us": call * 1e6,
                              "rss_kib_per_sandbox": rss / target,
                              "pte_kib_per_sandbox": pte / target,
                              "rss_mib": now["VmRSS"] / 1024, "pte_mib": now["VmPTE"] / 1024}),
                  flush=True)


def measure(image: Path, counts: list[int], tick: Callable[[str], None] | None = None
            ) -> list[DensityPoint]:
    """Run the child and collect its milestones."""
    cmd = [sys.executable, "-m", "tmebox.bench.density", str(image), *map(str, counts)]
    points = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None and p.stderr is not None
        for line in p.stdout:
            points.append(DensityPoint(**json.loads(line)))
            if tick:
                tick(f"density: {points[-1].count} sandboxes")
        err = p.stderr.read()
    if p.returncode != 0:
        last = err.strip().splitlines()[-1:] or ["no message"]
        raise BenchError(f"density run failed after {len(points)} milestones: {last[0]}")
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="child of `tmebox bench`: density milestones")
    ap.add_argument("image", type=Path)
    ap.add_argument("counts", type=int, nargs="+")
    args = ap.parse_args(argv)
    try:
        _child(args.image, sorted(args.counts))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
