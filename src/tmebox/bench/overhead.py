"""Overhead: each workload's three builds timed interleaved, ratios to the baseline.

The baseline is a native static executable kept running in `serve` mode (one
timed run per byte on its stdin); the instrumented builds are sandboxes of one
tmebox.Runtime (native backend) whose exported bench_iter() is called. Either
way the time is taken in C around workload_run() (kernels/harness.c), so spawn,
libc start-up and the Python call path are not part of it. Both the wall time and
the thread's CPU time are kept; ratios are computed for each (METRICS).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tmebox.bench import stats
from tmebox.bench.build import Built
from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import BASELINE, VARIANTS
from tmebox.errors import TmeboxError

if TYPE_CHECKING:
    from tmebox.runtime.api import Runtime

_MASK64 = (1 << 64) - 1
# cpu: CLOCK_THREAD_CPUTIME_ID, blind to time spent descheduled (the headline on a shared
# machine); wall: CLOCK_MONOTONIC.
METRICS = ("cpu", "wall")


@dataclass(frozen=True)
class Sample:
    """One timed run of one build."""

    workload: str
    variant: str
    round: int
    ns: int  # wall time
    cpu_ns: int
    checksum: int


class BaselineRunner:
    """The native executable in serve mode: write a byte, read "WALL_NS CPU_NS CHECKSUM"."""

    def __init__(self, exe: Path, scale: int) -> None:
        self.exe = exe
        try:
            self.proc = subprocess.Popen([str(exe), str(scale), "serve"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise BenchError(f"cannot start the baseline {exe}: {e.strerror}") from None

    def run_once(self) -> tuple[int, int, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(b"r")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline().split()
        if len(line) != 3:
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace").strip() if \
                self.proc.stderr else ""
            raise BenchError(f"baseline {self.exe.name} stopped answering "
                             f"(exit {self.proc.wait()}): {err or 'no message'}")
        return int(line[0]), int(line[1]), int(line[2], 16)

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(BrokenPipeError):  # it has exited already
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SandboxRunner:
    """One sandbox of an instrumented build: bench_init(scale) once, bench_iter() per run."""

    def __init__(self, runtime: Runtime, image: Path, scale: int) -> None:
        self.image = image
        self.stdout = bytearray()
        self.sb = runtime.spawn(runtime.load(image), argv=[image.name], stdout=self.stdout,
                                stderr=self.stdout)
        if self.sb.call("bench_init", scale) != 0:
            raise BenchError(f"{image.name}: bench_init({scale}) failed: "
                             f"{self.stdout.decode(errors='replace').strip()}")

    def run_once(self) -> tuple[int, int, int]:
        ns = self.sb.call("bench_iter")
        return ns, self.sb.call("bench_cpu"), self.sb.call("bench_checksum") & _MASK64

    def close(self) -> None:
        self.sb.destroy()


def measure(built: Built, scale: int, rounds: int, runtime: Runtime,
            tick: Callable[[str], None] | None = None) -> list[Sample]:
    """rounds interleaved runs of each build (after one untimed warm-up run each).

    Raises BenchError if a build computes a different checksum from the baseline's:
    the comparison only means something if they all did the same work.
    """
    return measure_paths(built.workload.name, {v: built.paths[v] for v in VARIANTS}, scale,
                         rounds, runtime, tick)


def measure_paths(name: str, paths: dict[str, Path], scale: int, rounds: int,
                  runtime: Runtime, tick: Callable[[str], None] | None = None) -> list[Sample]:
    """measure() for any builds of one workload: `paths[BASELINE]` is the native
    executable, every other path a sandbox image; they run in the order of `paths`."""
    order = list(paths)
    runners: dict[str, BaselineRunner | SandboxRunner] = {}
    try:
        for v in order:
            try:
                runners[v] = (BaselineRunner(paths[v], scale) if v == BASELINE
                              else SandboxRunner(runtime, paths[v], scale))
            except TmeboxError as e:
                raise BenchError(f"{name} ({v}): {e}") from None
        for v in order:
            try:
                runners[v].run_once()
            except TmeboxError as e:
                raise BenchError(f"{name} ({v}), warm-up run: {e}") from None
        samples = []
        for r, v in stats.interleave(order, rounds):
            try:
                ns, cpu_ns, checksum = runners[v].run_once()
            except TmeboxError as e:
                raise BenchError(f"{name} ({v}), round {r}: {e}") from None
            samples.append(Sample(name, v, r, ns, cpu_ns, checksum))
            if tick:
                tick(f"{name} {v} round {r + 1}/{rounds}")
    finally:
        for runner in runners.values():
            runner.close()
    check_checksums(samples)
    return samples


def check_checksums(samples: list[Sample]) -> None:
    want = {s.workload: s.checksum for s in samples if s.variant == BASELINE}
    for s in samples:
        if s.checksum != want.get(s.workload):
            raise BenchError(f"{s.workload} ({s.variant}) computed checksum {s.checksum:016x}, "
                             f"the baseline {want.get(s.workload, 0):016x}: the builds do not "
                             "agree, so their times cannot be compared")


@dataclass(frozen=True)
class Overhead:
    """One workload, one instrumented variant, against the baseline, by one metric."""

    workload: str
    variant: str
    metric: str  # "cpu" or "wall"
    baseline_ms: float
    variant_ms: float
    ratio: float  # median variant time / median baseline time
    ratio_q1: float  # quartiles of the per-round paired ratios (the spread)
    ratio_q3: float
    baseline_spread: float  # interquartile range / median of the baseline's times
    variant_spread: float

    @property
    def overhead_pct(self) -> float:
        return stats.overhead_pct(self.ratio)


def summarize(samples: list[Sample], metric: str = "cpu") -> list[Overhead]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    out = []
    workloads = list(dict.fromkeys(s.workload for s in samples))
    for w in workloads:
        times = {v: [s.cpu_ns if metric == "cpu" else s.ns
                     for s in sorted(samples, key=lambda s: s.round)
                     if s.workload == w and s.variant == v] for v in VARIANTS}
        base = stats.summarize(times[BASELINE])
        for v in VARIANTS:
            if v == BASELINE:
                continue
            var = stats.summarize(times[v])
            paired = stats.summarize(stats.paired_ratios(times[v], times[BASELINE]))
            out.append(Overhead(w, v, metric, base.median / 1e6, var.median / 1e6,
                                stats.ratio(var.median, base.median), paired.q1, paired.q3,
                                base.rel_spread, var.rel_spread))
    return out


def geomeans(rows: list[Overhead]) -> dict[str, float]:
    """Geomean ratio per variant over the workloads (rows of one metric)."""
    if len({r.metric for r in rows}) > 1:
        raise ValueError("geomeans() of rows of different metrics")
    variants = list(dict.fromkeys(r.variant for r in rows))
    return {v: stats.geomean([r.ratio for r in rows if r.variant == v]) for v in variants}


def interleaved_cpu(paths: dict[str, Path], scale: int, rounds: int) -> dict[str, list[int]]:
    """CPU ns of `rounds` interleaved runs of each build (measure_paths), for the A/B
    scripts in bench/: all on one CPU, since the vCPUs of a VM differ in speed."""
    from tmebox.runtime.api import Runtime

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        # Builds of our own workloads, data mode among them: opted into.
        with Runtime(backend="native", max_sandboxes=len(paths), min_isolation="data") as rt:
            samples = measure_paths("a/b", paths, scale, rounds, rt)
    finally:
        os.sched_setaffinity(0, allowed)
    return {v: [s.cpu_ns for s in samples if s.variant == v] for v in paths}


def ratio_quartiles(cpu: dict[str, list[int]], variant: str) -> tuple[float, float, float]:
    """(q1, median, q3) of the per-round ratios of `variant` to the baseline, in %."""
    ratios = sorted(a / b for a, b in zip(cpu[variant], cpu[BASELINE], strict=True))
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    return 100 * (q1 - 1), 100 * (med - 1), 100 * (q3 - 1)
