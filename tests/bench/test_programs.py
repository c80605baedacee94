"""The whole-program section: the baseline compiler, the inputs, and one program built by
its own Makefile three ways and timed whole through `tmebox bench` (fetched from Debian's
source packages, pinned and hash-checked)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tmebox.bench import programs
from tmebox.bench.errors import BenchError


def test_inputs_are_fixed_and_sized() -> None:
    for p in programs.PROGRAMS.values():
        a, b = p.make_input(p.quick_scale), p.make_input(p.quick_scale)
        assert a == b and len(a) > 0, p.name
        if p.make_input is not programs._bc_program:
            assert len(a) >= p.quick_scale, p.name


def test_selection() -> None:
    assert [p.name for p in programs.selected(["sed", "bc"], quick=False)] == ["sed", "bc"]
    assert len(programs.selected(None, quick=False)) == len(programs.PROGRAMS) >= 8
    with pytest.raises(BenchError, match=r"unknown program\(s\) nope; choose from gzip"):
        programs.selected(["nope"], quick=False)


def test_baseline_cc_links_plain_static_musl(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text('#include <stdio.h>\n#include <math.h>\n'
                   'int main(int c, char **v) { printf("%g %s\\n", sqrt(c + 1.0), v[0]); '
                   "return 3; }\n")
    cc = str(programs.baseline_cc())
    subprocess.run([cc, "-O2", "-c", str(src), "-o", str(tmp_path / "t.o")], check=True)
    subprocess.run([cc, str(tmp_path / "t.o"), "-o", str(tmp_path / "t"), "-lm"], check=True)
    res = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (3, f"1.41421 {tmp_path / 't'}\n")
    file = subprocess.run(["file", str(tmp_path / "t")], capture_output=True, text=True).stdout
    assert "statically linked" in file
    strings = (tmp_path / "t").read_bytes()
    assert b"GLIBC" not in strings and b"glibc" not in strings


def test_a_program_built_three_ways_and_timed_whole(tmp_path: Path, sandbox_libc) -> None:
    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "tmebox.cli", "bench", "--quick", "--only",
                          "programs", "--program", "compress", "--rounds", "2", "-o", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((out / "programs.csv").open()))
    assert {(r["workload"], r["variant"], r["metric"]) for r in rows} == {
        ("compress", v, m) for v in ("data", "code+data") for m in ("cpu", "wall")}
    assert all(float(r["baseline_ms"]) > 0 and float(r["variant_ms"]) > 0 for r in rows)
    samples = list(csv.DictReader((out / "programs_samples.csv").open()))
    assert len(samples) == 2 * 3 and len({s["checksum"] for s in samples}) == 1
    assert "Whole programs by CPU time" in (out / "summary.md").read_text()
