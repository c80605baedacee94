"""`tmebox run` start-up, as a user meets it: wall time of `tmebox run hello.box` (a cached,
verified image) against a bare `python -c pass`, interleaved, medians, and their ratio
(issue: <= 80 ms).

Bytecode is allowed to be written and used, as in an installed package, even where the
environment sets PYTHONDONTWRITEBYTECODE.

Usage: bench/cli_startup.py [--rounds N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    tmebox = [sys.executable, "-m", "tmebox.cli"]
    with tempfile.TemporaryDirectory() as d:
        src, box = Path(d) / "hello.c", Path(d) / "hello.box"
        src.write_text(HELLO)
        subprocess.run([*tmebox, "cc", str(src), "-o", str(box)], env=env, check=True)
        run, bare = [*tmebox, "run", str(box)], [sys.executable, "-c", "pass"]
        wall(run, env)  # verdict stored, bytecode written
        runs, bares = [], []
        for _ in range(a.rounds):
            runs.append(wall(run, env))
            bares.append(wall(bare, env))
    r, b = statistics.median(runs), statistics.median(bares)
    print(f"medians of {a.rounds} interleaved rounds")
    print(f"  tmebox run hello.box  {r * 1e3:7.1f} ms (target <= 80)")
    print(f"  python -c pass        {b * 1e3:7.1f} ms")
    print(f"  tmebox's own          {(r - b) * 1e3:7.1f} ms")
    print(f"  ratio                 {r / b:7.1f} x python -c pass (the machine's speed cancels)")
    if a.json:
        Path(a.json).write_text(json.dumps({"run_ms": r * 1e3, "bare_ms": b * 1e3,
                                            "ratio": r / b, "rounds": a.rounds}, indent=2))


if __name__ == "__main__":
    main()
