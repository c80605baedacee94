"""Switch cost: host -> sandbox -> host round trips beside process and thread switches.

Sandbox side (native backend, both isolation modes): the runtime's own C loop
(`tmebox_bench_roundtrip`: enter, run `noop`, exit, nothing in Python), the
Python API (`sb.call`), and two sandboxes called alternately (a switch from
tenant A to tenant B through the host), from the C loop (`tmebox_bench_alternate`)
and from Python. Host side, same run, same machine:
kernels/switch_host.c ping-pongs a byte between two processes and between two
threads over pipes, and between two threads on condition variables, pinned to
one CPU (two real context switches per round trip) and unpinned.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tmebox.bench import stats
from tmebox.bench.build import build_cache
from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import KERNEL_DIR
from tmebox.toolchain import cc, unit

HOST_SOURCE = KERNEL_DIR / "switch_host.c"
TENANT_SOURCE = KERNEL_DIR / "tenant.c"


@dataclass(frozen=True)
class SwitchResult:
    """Nanoseconds per round trip of one mechanism (median over batches)."""

    mechanism: str
    variant: str  # isolation mode for sandboxes, "host" for the references
    ns_per_roundtrip: float
    spread: float  # interquartile range / median over the batches
    note: str


def tenant_images(isolations: tuple[str, ...], rebuild: bool = False) -> dict[str, Path]:
    """The noop tenant built per isolation mode (cached by source and toolchain)."""
    from tmebox.toolchain import libc

    key = hashlib.sha256(TENANT_SOURCE.read_bytes() + libc.build_key().encode()).hexdigest()[:16]
    out = {}
    for iso in isolations:
        path = build_cache() / f"tenant-{key}" / f"tenant.{iso.replace('+', '_')}.box"
        if rebuild or not path.is_file():
            cc.build([TENANT_SOURCE], path, isolation=iso)
        out[iso] = path
    return out


def host_program() -> Path:
    exe = build_cache() / f"switch_host-{hashlib.sha256(HOST_SOURCE.read_bytes()).hexdigest()[:16]}"
    if exe.is_file():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    compiler = unit.find_compiler("gcc")
    tmp = exe.with_name(exe.name + ".tmp")
    res = subprocess.run([compiler.path, "-O2", "-pthread", "-o", str(tmp), str(HOST_SOURCE)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"building {HOST_SOURCE.name} failed: {res.stderr.strip()}")
    tmp.replace(exe)
    return exe


def host_switches(iterations: int) -> list[SwitchResult]:
    exe = host_program()
    out = []
    for mech, what in (("proc", "two processes, pipe ping-pong"),
                       ("thread", "two threads, pipe ping-pong"),
                       ("cond", "two threads, mutex + condition variables")):
        for cpu, where in ((0, "pinned to one CPU"), (-1, "unpinned")):
            res = subprocess.run([str(exe), mech, str(iterations), str(cpu)],
                                 capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise BenchError(f"{exe.name} {mech} failed: {res.stderr.strip()}")
            out.append(SwitchResult(f"{mech}-{'pinned' if cpu >= 0 else 'free'}", "host",
                                    float(res.stdout.strip()), float("nan"),
                                    f"{what}, {where}"))
    return out


def _batches(fn: Callable[[int], float], n: int, batches: int) -> stats.Summary:
    """Per-iteration ns of fn(n) (which returns total ns) over several batches."""
    fn(max(1, n // 10))  # warm-up
    return stats.summarize([fn(n) / n for _ in range(batches)])


def _c_roundtrip(sb: object, n: int) -> float:
    """The runtime's C loop over tmebox_call on one sandbox (no Python per call).

    Uses the native engine's context, the export's address and the call frame
    the way Sandbox.call does: the runtime offers the loop but no public wrapper.
    """
    from tmebox.runtime._native import lib

    engine = sb._engine  # type: ignore[attr-defined]
    rip = sb._lookup("noop")  # type: ignore[attr-defined]
    ns = lib.tmebox_bench_roundtrip(engine.ctx, rip, sb._call_rsp, sb._ret, n)  # type: ignore[attr-defined]
    if ns == 0:
        raise BenchError("the runtime's round-trip loop stopped early (the call faulted)")
    return float(ns)


def _c_alternate(a: object, b: object, n: int) -> float:
    """The runtime's C loop calling tenant A then tenant B: 2n calls, each a switch."""
    from tmebox.runtime._native import lib

    ends = [(sb._engine.ctx, sb._lookup("noop"), sb._call_rsp, sb._ret)  # type: ignore[attr-defined]
            for sb in (a, b)]
    ns = lib.tmebox_bench_alternate(*ends[0], *ends[1], n)
    if ns == 0:
        raise BenchError("the runtime's alternating loop stopped early (a call faulted)")
    return ns / 2


def _py_calls(sbs: list, n: int) -> float:
    calls = [sb.call for sb in sbs]
    k = len(calls)
    t0 = time.perf_counter_ns()
    for i in range(n):
        calls[i % k]("noop", i)
    return float(time.perf_counter_ns() - t0)


def sandbox_switches(images: dict[str, Path], iterations: int, batches: int = 5
                     ) -> list[SwitchResult]:
    from tmebox.runtime.api import Runtime

    out = []
    # Our own tenant, measured in both modes: data mode is opted into.
    with Runtime(backend="native", max_sandboxes=2 * len(images), min_isolation="data") as rt:
        for iso, path in images.items():
            img = rt.load(path)
            a, b = rt.spawn(img), rt.spawn(img)
            if a.call("noop", 41) != 42:
                raise BenchError(f"{path.name}: noop(41) did not return 42")
            s = _batches(partial(_c_roundtrip, a), iterations, batches)
            out.append(SwitchResult("sandbox-c", iso, s.median, s.rel_spread,
                                    "host -> sandbox -> host, runtime's C loop"))
            s = _batches(partial(_c_alternate, a, b), iterations // 2, batches)
            out.append(SwitchResult("sandbox-ab-c", iso, s.median, s.rel_spread,
                                    "tenant A -> host -> tenant B, runtime's C loop alternating"))
            py_n = max(1, iterations // 10)
            s = _batches(partial(_py_calls, [a]), py_n, batches)
            out.append(SwitchResult("sandbox-py", iso, s.median, s.rel_spread,
                                    "host -> sandbox -> host, Python sb.call"))
            s = _batches(partial(_py_calls, [a, b]), py_n, batches)
            out.append(SwitchResult("sandbox-ab-py", iso, s.median, s.rel_spread,
                                    "tenant A -> host -> tenant B, Python sb.call alternating"))
            a.destroy()
            b.destroy()
    return out
