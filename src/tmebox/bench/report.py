"""Result files: CSV per section, one JSON with everything, PNG plots, a Markdown summary."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import BASELINE


def _rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for x in items:
        row = (dataclasses.asdict(x) if dataclasses.is_dataclass(x) and not isinstance(x, type)
               else dict(x))
        if hasattr(x, "overhead_pct"):
            row["overhead_pct"] = x.overhead_pct
        out.append(row)
    return out


def write_csv(path: Path, items: Sequence[Any]) -> Path:
    rows = _rows(items)
    with path.open("w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def _clean(x: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path: Path, results: dict[str, Any]) -> Path:
    doc = {k: (_rows(v) if isinstance(v, list) and v and dataclasses.is_dataclass(v[0]) else v)
           for k, v in results.items()}
    path.write_text(json.dumps(_clean(doc), indent=1, sort_keys=False) + "\n")
    return path


def require_plotting() -> None:
    """Plots need the `bench` extra; an embedding library does not pull in matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchError("tmebox bench draws its plots with matplotlib, which is not installed: "
                         "pip install 'tmebox[bench]' (./scripts/setup installs it)")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overhead(path: Path, rows: Sequence[Any], geo: dict[str, float]) -> Path:
    """Bars of % overhead per workload and variant, with the interquartile range of the
    per-round ratios as error bars, and the geomean."""
    plt = _plt()
    workloads = list(dict.fromkeys(r.workload for r in rows)) + ["geomean"]
    variants = list(dict.fromkeys(r.variant for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(workloads) + 2), 4))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        vals, lo, hi = [], [], []
        for w in workloads[:-1]:
            r = next(r for r in rows if r.workload == w and r.variant == v)
            vals.append(r.overhead_pct)
            lo.append(max(0.0, r.overhead_pct - (r.ratio_q1 - 1) * 100))
            hi.append(max(0.0, (r.ratio_q3 - 1) * 100 - r.overhead_pct))
        vals.append((geo[v] - 1) * 100)
        lo.append(0.0)
        hi.append(0.0)
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(workloads))]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=2, label=v)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(workloads)), workloads, rotation=30, ha="right")
    ax.set_ylabel(f"run time overhead vs. {BASELINE} (%)")
    ax.set_title(f"Instrumentation overhead (native backend, {rows[0].metric} time)")
    ax.legend()
    return _save(plt, fig, path)


def plot_switch(path: Path, rows: Sequence[Any]) -> Path:
    plt = _plt()
    labels = [f"{r.mechanism}\n({r.variant})" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4))
    colors = ["tab:blue" if r.variant != "host" else "tab:gray" for r in rows]
    ax.bar(range(len(rows)), [r.ns_per_roundtrip for r in rows], color=colors)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ns per round trip (log)")
    ax.set_title("Switch cost: sandboxes (blue) vs. process/thread switches (gray)")
    return _save(plt, fig, path)


def plot_density(path: Path, points: Sequence[Any]) -> Path:
    plt = _plt()
    counts = [p.count for p in points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(counts, [p.spawn_us for p in points], "o-", label="spawn")
    a.plot(counts, [p.call_us for p in points], "s-", label="noop call")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("live sandboxes")
    a.set_ylabel("µs per sandbox")
    a.legend()
    a.set_title("Spawn and call time")
    b.plot(counts, [p.rss_kib_per_sandbox for p in points], "o-", label="RSS")
    b.plot(counts, [p.pte_kib_per_sandbox for p in points], "s-", label="page tables")
    b.set_xscale("log")
    b.set_xlabel("live sandboxes")
    b.set_ylabel("KiB per sandbox")
    b.legend()
    b.set_title("Memory per sandbox")
    return _save(plt, fig, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _overhead_table(rows: Sequence[Any], geo: dict[str, float]) -> str:
    variants = list(dict.fromkeys(r.variant for r in rows))
    body = []
    for w in dict.fromkeys(r.workload for r in rows):
        rs = {r.variant: r for r in rows if r.workload == w}
        first = next(iter(rs.values()))
        body.append([w, f"{first.baseline_ms:.1f}"] + [
            f"{rs[v].overhead_pct:+.1f} % [{(rs[v].ratio_q1 - 1) * 100:+.1f}, "
            f"{(rs[v].ratio_q3 - 1) * 100:+.1f}]" for v in variants])
    body.append(["**geomean**", ""] + [f"**{(geo[v] - 1) * 100:+.1f} %**" for v in variants])
    return _table(["workload", "baseline ms"] + variants, body)


def summary_markdown(results: dict[str, Any]) -> str:
    """The tables docs/evaluation.md quotes, in Markdown."""
    out = []
    m = results.get("machine", {})
    out.append(f"Run {results.get('started', '?')} on {m.get('cpu', '?')}, "
               f"{m.get('cpus', '?')} CPUs, Linux {m.get('kernel', '?')}; load average "
               f"{m.get('load_before', '?')} before, {m.get('load_after', '?')} after; "
               f"{'quick' if results.get('config', {}).get('quick') else 'full'} mode, "
               f"{results.get('config', {}).get('rounds', '?')} rounds.\n")
    for key, geo_key, label in (
            ("overhead", "geomean", "Overhead by thread CPU time"),
            ("overhead_wall", "geomean_wall", "Overhead by wall time"),
            ("programs", "programs_geomean", "Whole programs by CPU time, system calls in"),
            ("programs_wall", "programs_geomean_wall", "Whole programs by wall time")):
        rows = results.get(key, [])
        if rows:
            out.append(f"### {label} (median; [q1, q3] of per-round ratios)\n")
            out.append(_overhead_table(rows, results.get(geo_key, {})) + "\n")
    for name, err in results.get("failed_sections", {}).items():
        out.append(f"**section {name} failed**: {err}\n")
    for f in results.get("failures", []):
        out.append(f"**{f['workload']} left out** ({f['stage']}): {f['error']}\n")
    sw = results.get("switch", [])
    if sw:
        out.append("### Switch cost\n")
        out.append(_table(["mechanism", "variant", "ns / round trip", "what"],
                          [[s.mechanism, s.variant, f"{s.ns_per_roundtrip:,.0f}", s.note]
                           for s in sw]) + "\n")
    dens = results.get("density", [])
    if dens:
        out.append("### Density\n")
        out.append(_table(["sandboxes", "spawn µs", "call µs", "RSS KiB/sandbox",
                           "page tables KiB/sandbox", "process RSS MiB"],
                          [[f"{p.count:,}", f"{p.spawn_us:.0f}", f"{p.call_us:.1f}",
                            f"{p.rss_kib_per_sandbox:.1f}", f"{p.pte_kib_per_sandbox:.1f}",
                            f"{p.rss_mib:.0f}"] for p in dens]) + "\n")
        if results.get("density_note"):
            out.append(f"Note: {results['density_note']}\n")
    tme = results.get("tme", [])
    if tme:
        out.append("### Emulated TME-MK\n")
        out.append(_table(["what", "integrity", "value", "unit"],
                          [[t.what, "yes" if t.integrity else "no", f"{t.value:,.1f}", t.unit]
                           for t in tme]) + "\n")
    tc = results.get("toolchain", [])
    if tc:
        out.append("### Toolchain\n")
        out.append(_table(["workload", "variant", "cc s", "code KiB", "verify cold MiB/s",
                           "verify warm MiB/s"],
                          [[t.workload, t.variant, f"{t.cc_seconds:.1f}",
                            f"{t.code_bytes / 1024:.0f}",
                            "" if t.verify_cold_mib_s is None else f"{t.verify_cold_mib_s:.2f}",
                            "" if t.verify_warm_mib_s is None else f"{t.verify_warm_mib_s:.2f}"]
                           for t in tc]) + "\n")
    return "\n".join(out)
