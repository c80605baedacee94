"""The developer benchmarks under bench/: each still starts and explains itself.

They are run by hand (bench/README.md), so nothing else notices when a refactoring breaks
their imports or options; `--help` imports the whole script and parses its options.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed_in_the_bench_readme() -> None:
    readme = (BENCH / "README.md").read_text()
    missing = [p.name for p in SCRIPTS if f"`{p.name}`" not in readme]
    assert not missing, f"bench/README.md does not list {missing}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_help(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {script.name}"), r.stdout[:200]


def test_tme_backend_quick_run(tmp_path: Path) -> None:
    # The one developer benchmark with machine-checked output: medians and the density run.
    bench = BENCH / "tme_backend_speed.py"
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(bench), "--quick", "--rounds", "1", "--out",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    med = json.loads(out.read_text())["medians"]
    assert med["tme.alu"] > 0 and med["tme.switch_us"] > 0
    r = subprocess.run([sys.executable, str(bench), "--density", "40"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "40 distinct KeyIDs" in r.stdout, r.stderr
