"""How fast is the assembly rewriter, per file and per process?

The sandbox libc build runs the rewriter once per source file in a fresh interpreter,
so two numbers matter:

1. in-process time per file (rewrite_assembly on the text), over a corpus of .s files;
2. wall time of `python -m tmebox.toolchain.rewriter` on a typical file, against the
   baseline `python -c pass` measured interleaved in the same run (the difference is
   the rewriter's own cost: imports plus work).

Usage: python bench/rewriter_speed.py [--rounds N] DIR_OR_FILES...
(a directory means every *.s below it; `gcc -S` output of musl's sources is the
intended corpus).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tmebox.toolchain.rewriter import rewrite_assembly  # noqa: E402


def corpus(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.s")) if p.is_dir() else [p]
    return files


def in_process(files: list[Path], mode: str) -> list[tuple[float, int]]:
    out = []
    for f in files:
        text = f.read_text(errors="surrogateescape")
        t0 = time.perf_counter()
        try:
            rewrite_assembly(text, isolation=mode, source=str(f))
        except Exception:  # noqa: BLE001 - files the rewriter refuses are not timed
            continue
        out.append((time.perf_counter() - t0, text.count("\n")))
    return out


def per_process(typical: Path, mode: str,
                rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall times of: the bare interpreter; `python -m` on the rewriter with its bytecode
    cached (the normal case after installation); the rewriter compiled from source in
    every process (PYTHONDONTWRITEBYTECODE=1 and no cached bytecode for tmebox)."""
    with tempfile.TemporaryDirectory() as cached, tempfile.TemporaryDirectory() as fresh:
        shutil.copytree(REPO / "src" / "tmebox", Path(fresh) / "tmebox",
                        ignore=shutil.ignore_patterns("__pycache__"))
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        envs = {
            "python -c pass": env,
            "rewriter, bytecode cached": dict(env, PYTHONPATH=str(REPO / "src"),
                                              PYTHONPYCACHEPREFIX=cached),
            "rewriter, no bytecode": dict(env, PYTHONPATH=fresh, PYTHONDONTWRITEBYTECODE="1"),
            "main() via -c, cached": dict(env, PYTHONPATH=str(REPO / "src"),
                                          PYTHONPYCACHEPREFIX=cached),
        }
        rw_cmd = [sys.executable, "-m", "tmebox.toolchain.rewriter", "--isolation", mode,
                  str(typical), "-o", os.devnull]
        cmds = {"python -c pass": [sys.executable, "-c", "pass"]}
        cmds |= {k: rw_cmd for k in envs if k.startswith("rewriter")}
        # Without `-m`: runpy and importlib.util are not imported.
        cmds["main() via -c, cached"] = [
            sys.executable, "-c", "import sys; from tmebox.toolchain.rewriter import main; "
            f"sys.exit(main({rw_cmd[3:]!r}))"]
        for k in envs:  # warm-up (writes the cached bytecode)
            subprocess.run(cmds[k], env=envs[k], check=True)
        wall: dict[str, list[float]] = {k: [] for k in envs}
        cpu: dict[str, list[float]] = {k: [] for k in envs}
        for _ in range(rounds):  # interleaved, so drift hits every variant equally
            for k in envs:
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmds[k], env=envs[k])
                _, status, usage = os.wait4(proc.pid, 0)
                wall[k].append(time.perf_counter() - t0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode:
                    sys.exit(f"{cmds[k]} failed with status {proc.returncode}")
                # CPU time is what the process itself costs; wall time also counts
                # waiting for a core when the machine is busy.
                cpu[k].append(usage.ru_utime + usage.ru_stime)
        return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--rounds", type=int, default=41)
    args = ap.parse_args()
    files = corpus(args.paths)
    if not files:
        sys.exit("no .s files found")
    for mode in ("data", "code+data"):
        timed = in_process(files, mode)
        secs = sorted(t for t, _ in timed)
        lines = sum(n for _, n in timed)
        print(f"[{mode}] in-process: {len(timed)} files, {lines} lines; per file median "
              f"{statistics.median(secs) * 1e3:.2f} ms, p90 {secs[int(0.9 * len(secs))] * 1e3:.2f}"
              f" ms, max {secs[-1] * 1e3:.1f} ms; {lines / sum(secs) / 1e3:.0f} k lines/s")
    sizes = sorted(files, key=lambda f: f.stat().st_size)
    typical = sizes[len(sizes) // 2]
    for mode in ("data", "code+data"):
        wall, cpu = per_process(typical, mode, args.rounds)
        print(f"[{mode}] per process on {typical.name} ({typical.stat().st_size} bytes), "
              f"medians of {args.rounds} interleaved runs, wall / CPU (user+sys):")
        base_wall = statistics.median(wall["python -c pass"])
        base_cpu = statistics.median(cpu["python -c pass"])
        for k in wall:
            w, c = statistics.median(wall[k]), statistics.median(cpu[k])
            extra = "" if k == "python -c pass" else (
                f"  ratio {w / base_wall:.2f} / {c / base_cpu:.2f}; own cost "
                f"{(w - base_wall) * 1e3:.1f} / {(c - base_cpu) * 1e3:.1f} ms")
            print(f"    {k:26s} {w * 1e3:6.1f} / {c * 1e3:5.1f} ms{extra}")


if __name__ == "__main__":
    main()
