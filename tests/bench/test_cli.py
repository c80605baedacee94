"""`tmebox bench` end to end: the quick smoke run writes every result file.

The first run in a fresh cache also builds the kernels (three ways) and the
tenant; later runs reuse the cached builds.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmebox.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "results"
    res = _bench("--quick", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert f"results: {out}" in res.stdout
    return out


def test_quick_run_writes_csv_json_png(quick_run: Path) -> None:
    for name in ("overhead.csv", "overhead_samples.csv", "switch.csv", "density.csv",
                 "tme.csv", "toolchain.csv", "results.json", "summary.md"):
        assert (quick_run / name).stat().st_size > 0, name
    for name in ("overhead.png", "switch.png", "density.png"):
        assert (quick_run / name).read_bytes()[:8] == PNG, name
    assert not (quick_run / "programs.csv").exists()  # --quick: only when named


def test_quick_run_results_are_consistent(quick_run: Path) -> None:
    doc = json.loads((quick_run / "results.json").read_text())
    kernels = {"chase", "recurse", "indirect", "memcpy", "hash"}
    assert set(doc["config"]["workloads"]) == kernels
    assert doc["config"]["quick"] is True and doc["config"]["rounds"] == 3
    assert set(doc["geomean"]) == {"data", "code+data"}
    assert all(g > 0 for g in doc["geomean"].values())
    rows = doc["overhead"]
    assert {(r["workload"], r["variant"]) for r in rows} == {
        (w, v) for w in kernels for v in ("data", "code+data")}
    # Interleaved: each round runs baseline, data, code+data in turn.
    samples = doc["overhead_samples"]
    first = [s for s in samples if s["workload"] == "chase"]
    assert [s["variant"] for s in first] == ["baseline", "data", "code+data"] * 3
    # Every build of a workload computed the same checksum.
    for w in kernels:
        assert len({s["checksum"] for s in samples if s["workload"] == w}) == 1
    with (quick_run / "overhead_samples.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(samples) == 5 * 3 * 3
    assert [p["count"] for p in doc["density"]] == [1, 10, 100]
    assert all(p["spawn_us"] > 0 for p in doc["density"])
    mechanisms = {s["mechanism"] for s in doc["switch"]}
    assert {"sandbox-c", "sandbox-ab-c", "sandbox-py", "sandbox-ab-py", "proc-pinned",
            "thread-pinned", "cond-pinned"} <= mechanisms
    sandbox_c = [s["ns_per_roundtrip"] for s in doc["switch"] if s["mechanism"] == "sandbox-c"]
    assert all(0 < ns < 1e6 for ns in sandbox_c)
    verified = [t for t in doc["toolchain"] if t["variant"] != "baseline"]
    assert verified and all(t["verify_cold_mib_s"] > 0 for t in verified)
    tme = {(t["what"], t["integrity"]): t["value"] for t in doc["tme"]}
    assert tme[("encrypt", True)] > 0 and tme[("relocate", False)] > 0
    assert tme[("tme slowdown", False)] > 0 and tme[("tme slowdown", True)] > 0
    # a guest instruction count over the emulated run's CPU time: not zero, not absurd
    assert 1 < tme[("guest instructions", False)] < 100_000


@pytest.mark.parametrize("args, message", [
    (["--workload", "nope"], "unknown workload(s) nope"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--only", "programs", "--program", "nope"], "unknown program(s) nope"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    res = _bench("--quick", "-o", str(tmp_path / "r"), *args, timeout=120)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr
