"""`tmebox bench`: the evaluation harness (docs/evaluation.md).

Sections: overhead (workloads built three ways, timed interleaved), programs
(real command-line programs timed whole, system calls included), switch
(sandbox round trips beside process and thread switches), density (spawn time
and memory per sandbox up to 32K), tme (the emulated TME-MK platform, and the
tme backend if installed), toolchain (cc seconds, verifier MiB/s). Results go
to a folder as CSV, one JSON, PNG plots and a Markdown summary.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tmebox.bench.errors import BenchError
from tmebox.errors import TmeboxError

SECTIONS = ("overhead", "programs", "switch", "density", "tme", "toolchain")
# what --quick runs unless asked for by name: the programs' builds take minutes
QUICK_SECTIONS = tuple(s for s in SECTIONS if s != "programs")
FULL_ROUNDS = 11
QUICK_ROUNDS = 3


@dataclass
class Options:
    out: Path | None = None  # default: ./results/<UTC timestamp>/
    quick: bool = False  # kernels only, tiny sizes: a smoke run
    workloads: list[str] | None = None  # default: all (kernels only with quick)
    rounds: int | None = None  # default: 11, or 3 with quick
    sections: list[str] | None = None  # default: SECTIONS, or QUICK_SECTIONS with quick
    programs: list[str] | None = None  # default: all (two with quick)
    rebuild: bool = False
    progress: bool = True


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split()[1]
        mem_gib = round(int(mem) / (1 << 20), 1)
    except (OSError, IndexError, ValueError):
        mem_gib = None
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": mem_gib,
            "kernel": platform.release(), "python": platform.python_version(),
            "gcc": gcc.splitlines()[0] if gcc else None, "commit": commit or None,
            "load_before": [round(x, 2) for x in os.getloadavg()]}


class _Progress:
    """A rich progress bar on a terminal; one line per step otherwise (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    @contextmanager
    def running(self, total: int) -> Iterator[_Progress]:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description:<40}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                          console=Console(stderr=True)) as bar:
                self._bar = bar
                self._task = bar.add_task("tmebox bench", total=total)
                yield self
            self._bar = None
        else:
            yield self

    def tick(self, what: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=what)
        elif self.enabled:
            print(f"tmebox bench: {what}", file=sys.stderr, flush=True)

    def note(self, what: str) -> None:
        if self._bar is not None:
            self._bar.console.print(what)
        elif self.enabled:
            print(f"tmebox bench: {what}", file=sys.stderr, flush=True)


def run(opts: Options) -> Path:
    """Run the selected sections; returns the results folder."""
    from tmebox.bench import build, programs, report, workloads

    if opts.sections is None:
        opts = replace(opts, sections=list(QUICK_SECTIONS if opts.quick else SECTIONS))
    assert opts.sections is not None
    unknown = [s for s in opts.sections if s not in SECTIONS]
    if unknown:
        raise BenchError(f"unknown section(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    rounds = opts.rounds if opts.rounds is not None else (QUICK_ROUNDS if opts.quick
                                                          else FULL_ROUNDS)
    if rounds < 1:
        raise BenchError(f"--rounds must be at least 1, not {rounds}")
    report.require_plotting()  # before minutes of measuring, not after
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = opts.out or Path("results") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create the results folder {out}: {e.strerror}") from None
    chosen = workloads.selected(opts.workloads, opts.quick)
    progs = programs.selected(opts.programs, opts.quick) if "programs" in opts.sections else []
    need_builds = any(s in opts.sections for s in ("overhead", "toolchain"))
    results: dict[str, Any] = {
        "started": started, "machine": _machine(),
        "config": {"quick": opts.quick, "rounds": rounds, "sections": opts.sections,
                   "workloads": [w.name for w in chosen], "programs": [p.name for p in progs],
                   "scales": {w.name: (w.quick_scale if opts.quick else w.scale)
                              for w in chosen}},
    }
    counts = _density_counts(opts, results) if "density" in opts.sections else []
    steps = (len(chosen) * (1 if need_builds else 0)
             + (len(chosen) * rounds * len(workloads.VARIANTS)
                if "overhead" in opts.sections else 0)
             + len(progs) * (1 + rounds * len(workloads.VARIANTS))
             + (2 if "switch" in opts.sections else 0) + len(counts)
             + (1 if "tme" in opts.sections else 0) + (1 if "toolchain" in opts.sections else 0))
    prog = _Progress(opts.progress)
    files: list[Path] = []
    with prog.running(steps):
        builds = []
        if need_builds:
            for w in chosen:
                try:
                    builds.append(build.build(w, progress=None, rebuild=opts.rebuild))
                except BenchError as e:
                    _failed(results, prog, w.name, "build", e)
                prog.tick(f"built {w.name}")
        if "toolchain" in opts.sections:
            from tmebox.bench import toolchain

            results["toolchain"] = toolchain.measure(builds)
            files.append(report.write_csv(out / "toolchain.csv", results["toolchain"]))
            prog.tick("verifier throughput")
        sections = [("overhead", lambda: _overhead(builds, opts, rounds, results, out, prog)),
                    ("programs", lambda: _programs(progs, opts, rounds, results, out, prog)),
                    ("switch", lambda: _switch(opts, results, out, prog)),
                    ("density", lambda: _density(opts, counts, results, out, prog)),
                    ("tme", lambda: _tme(opts, rounds, results, out, prog))]
        for name, section in sections:
            if name not in opts.sections or (name == "density" and not counts):
                continue
            try:
                files += section()
            except TmeboxError as e:
                # The other sections still run and everything measured is written.
                results.setdefault("failed_sections", {})[name] = str(e)
                prog.note(f"section {name} failed: {e}")
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "summary.md").write_text(report.summary_markdown(results))
    report.write_json(out / "results.json", results)
    if results.get("failed_sections"):
        failed = results["failed_sections"]
        raise BenchError(f"section(s) {', '.join(failed)} failed (results so far in {out}): "
                         + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return out


def _failed(results: dict[str, Any], prog: _Progress, workload: str, stage: str,
            error: BenchError) -> None:
    """A workload that cannot be built or run is reported and left out, not fatal."""
    results.setdefault("failures", []).append(
        {"workload": workload, "stage": stage, "error": str(error)})
    prog.note(f"{workload}: {stage} failed, left out: {error}")


def _measure_all(builds: list, opts: Options, rounds: int, rt: Any,
                 results: dict[str, Any], prog: _Progress) -> list:
    from tmebox.bench import overhead

    samples = []
    for b in builds:
        scale = b.workload.quick_scale if opts.quick else b.workload.scale
        try:
            samples += overhead.measure(b, scale, rounds, rt, tick=prog.tick)
        except BenchError as e:
            _failed(results, prog, b.workload.name, "overhead", e)
    return samples


@contextmanager
def _one_cpu(results: dict[str, Any], key: str) -> Iterator[None]:
    """One CPU for the harness thread (which runs the sandboxes) and the baseline processes
    (they inherit it): the vCPUs of a VM need not be equally fast, and a baseline that
    lands on the other one would skew every ratio."""
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    results["config"][key] = cpu
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _overhead(builds: list, opts: Options, rounds: int, results: dict[str, Any], out: Path,
              prog: _Progress) -> list[Path]:
    from tmebox.runtime.api import Runtime

    with _one_cpu(results, "overhead_cpu"), \
            Runtime(backend="native", max_sandboxes=8, min_isolation="data") as rt:
        # The workloads are our own code, measured in both modes: data mode is opted into.
        samples = _measure_all(builds, opts, rounds, rt, results, prog)
    if not samples:
        raise BenchError("no workload could be measured: "
                         + "; ".join(f"{f['workload']}: {f['error']}"
                                     for f in results.get("failures", [])))
    return _overhead_results(samples, results, out, "overhead", "geomean")


def _overhead_results(samples: list, results: dict[str, Any], out: Path, name: str,
                      geo_key: str) -> list[Path]:
    """Ratios to the baseline by CPU and wall time into results (name, geo_key, their
    _wall twins, name_samples) and NAME.csv, NAME_samples.csv, NAME.png."""
    from tmebox.bench import overhead, report

    rows, wall = overhead.summarize(samples, "cpu"), overhead.summarize(samples, "wall")
    results[name], results[geo_key] = rows, overhead.geomeans(rows)
    results[f"{name}_wall"], results[f"{geo_key}_wall"] = wall, overhead.geomeans(wall)
    results[f"{name}_samples"] = [asdict(s) for s in samples]
    return [report.write_csv(out / f"{name}_samples.csv", samples),
            report.write_csv(out / f"{name}.csv", rows + wall),
            report.plot_overhead(out / f"{name}.png", rows, results[geo_key])]


def _programs(progs: list, opts: Options, rounds: int, results: dict[str, Any], out: Path,
              prog: _Progress) -> list[Path]:
    import tempfile

    from tmebox.bench import programs
    from tmebox.runtime.api import Runtime

    built = []
    for p in progs:
        try:
            built.append((p, programs.build(p, progress=prog.note, rebuild=opts.rebuild)))
        except BenchError as e:
            _failed(results, prog, p.name, "build", e)
        prog.tick(f"built {p.name}")
    samples = []
    with _one_cpu(results, "programs_cpu"), tempfile.TemporaryDirectory() as tmp, \
            Runtime(backend="native", max_sandboxes=8, min_isolation="data") as rt:
        # Programs built here, measured in both modes: data mode is opted into.
        for p, paths in built:
            try:
                samples += programs.measure(p, paths, p.quick_scale if opts.quick else p.scale,
                                            rounds, rt, Path(tmp), tick=prog.tick)
            except BenchError as e:
                _failed(results, prog, p.name, "programs", e)
    if not samples:
        raise BenchError("no program could be measured")
    return _overhead_results(samples, results, out, "programs", "programs_geomean")


def _switch(opts: Options, results: dict[str, Any], out: Path, prog: _Progress) -> list[Path]:
    from tmebox.bench import report, switch
    from tmebox.trusted import abi

    n = 2000 if opts.quick else 200_000
    images = switch.tenant_images(abi.ISOLATION_MODES, rebuild=opts.rebuild)
    rows = switch.sandbox_switches(images, n)
    prog.tick("sandbox round trips")
    rows += switch.host_switches(n // 10 if opts.quick else 50_000)
    prog.tick("process and thread switches")
    results["switch"] = rows
    return [report.write_csv(out / "switch.csv", rows), report.plot_switch(out / "switch.png",
                                                                          rows)]


def _density_counts(opts: Options, results: dict[str, Any]) -> list[int]:
    from tmebox.bench import density

    counts, note = density.fit_counts(density.QUICK_COUNTS if opts.quick
                                      else density.FULL_COUNTS)
    if note:
        results["density_note"] = note
    return counts


def _density(opts: Options, counts: list[int], results: dict[str, Any], out: Path,
             prog: _Progress) -> list[Path]:
    from tmebox.bench import density, report, switch

    image = switch.tenant_images(("code+data",), rebuild=False)["code+data"]
    if results.get("density_note"):
        prog.note(results["density_note"])
    points = density.measure(image, counts, tick=prog.tick)
    results["density"] = points
    return [report.write_csv(out / "density.csv", points),
            report.plot_density(out / "density.png", points)]


def _tme(opts: Options, rounds: int, results: dict[str, Any], out: Path,
         prog: _Progress) -> list[Path]:
    from tmebox.bench import build, report, tme, workloads

    rows = tme.platform_throughput((64 << 10) if opts.quick else (4 << 20), rounds)
    chase = build.build(workloads.WORKLOADS["chase"])
    rows += tme.backend_slowdown(chase.paths["code+data"], 1 if opts.quick else 4,
                                 min(rounds, 5))
    results["tme"] = rows
    prog.tick("emulated TME-MK")
    return [report.write_csv(out / "tme.csv", rows)]


__all__ = ["QUICK_SECTIONS", "SECTIONS", "BenchError", "Options", "run"]
