"""The evaluation harness's logic: interleaving, statistics, result files, fetching.

No workload is built or timed here (tests/bench/test_cli.py runs `tmebox bench --quick`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest

from tmebox.bench import density, fetch, overhead, report, stats
from tmebox.bench.errors import BenchError, FetchError
from tmebox.bench.overhead import Sample
from tmebox.bench.workloads import BASELINE, VARIANTS, WORKLOADS, baseline_cflags, selected
from tmebox.trusted import abi

# -- interleaving and statistics -------------------------------------------------------------


def test_interleave_runs_every_variant_once_per_round_in_order() -> None:
    order = stats.interleave(["A", "B", "C"], 3)
    assert [v for _, v in order] == ["A", "B", "C"] * 3
    assert [r for r, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("rounds", [0, -1])
def test_interleave_rejects_no_rounds(rounds: int) -> None:
    with pytest.raises(ValueError, match="rounds"):
        stats.interleave(["A"], rounds)


def test_summarize_median_quartiles_and_spread() -> None:
    s = stats.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.n, s.median, s.lo, s.hi, s.q1, s.q3) == (5, 3.0, 1.0, 5.0, 2.0, 4.0)
    assert s.rel_spread == pytest.approx(2.0 / 3.0)
    even = stats.summarize([4.0, 1.0, 2.0, 3.0])
    assert even.median == 2.5
    one = stats.summarize([7.0])
    assert (one.median, one.q1, one.q3, one.rel_spread) == (7.0, 7.0, 7.0, 0.0)
    with pytest.raises(ValueError):
        stats.summarize([])


def test_geomean_ratio_and_overhead() -> None:
    assert stats.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert stats.geomean([1.05, 1.05, 1.05]) == pytest.approx(1.05)
    assert stats.geomean([2.0, 8.0, 4.0]) == pytest.approx(4.0)
    assert stats.ratio(110.0, 100.0) == pytest.approx(1.1)
    assert stats.overhead_pct(1.052) == pytest.approx(5.2)
    for bad in ([], [1.0, 0.0], [-1.0]):
        with pytest.raises(ValueError):
            stats.geomean(bad)
    with pytest.raises(ValueError):
        stats.ratio(1.0, 0.0)


def test_paired_ratios_pair_rounds() -> None:
    assert stats.paired_ratios([110, 220], [100, 200]) == pytest.approx([1.1, 1.1])
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0], [1.0, 2.0])


def _samples(times: dict[str, dict[str, list[int]]], checksum: int = 7,
             wall_factor: int = 3) -> list[Sample]:
    """CPU times as given; wall times wall_factor times the CPU time, plus 1 ms for the
    baseline only (so the two metrics give different ratios)."""
    out = []
    for w, per_variant in times.items():
        rounds = len(next(iter(per_variant.values())))
        for r in range(rounds):
            for v in VARIANTS:
                cpu = per_variant[v][r]
                wall = cpu * wall_factor + (1_000_000 if v == BASELINE else 0)
                out.append(Sample(w, v, r, wall, cpu, checksum))
    return out


def test_overhead_summary_and_geomean_from_samples() -> None:
    samples = _samples({
        "w1": {BASELINE: [100, 102, 98], "data": [110, 112, 108], "code+data": [120, 125, 119]},
        "w2": {BASELINE: [50, 50, 50], "data": [50, 51, 49], "code+data": [60, 60, 60]},
    })
    rows = overhead.summarize(samples)
    by = {(r.workload, r.variant): r for r in rows}
    assert set(by) == {(w, v) for w in ("w1", "w2") for v in abi.ISOLATION_MODES}
    assert by[("w1", "data")].ratio == pytest.approx(110 / 100)
    assert by[("w1", "code+data")].ratio == pytest.approx(120 / 100)
    assert by[("w2", "data")].overhead_pct == pytest.approx(0.0)
    assert by[("w2", "code+data")].ratio_q1 == pytest.approx(1.2)
    assert by[("w1", "data")].baseline_ms == pytest.approx(100e-6)
    assert {r.metric for r in rows} == {"cpu"}
    geo = overhead.geomeans(rows)
    assert geo["data"] == pytest.approx(math.sqrt(1.1 * 1.0))
    assert geo["code+data"] == pytest.approx(math.sqrt(1.2 * 1.2))
    wall = {(r.workload, r.variant): r for r in overhead.summarize(samples, "wall")}
    assert wall[("w1", "data")].ratio == pytest.approx(330 / (300 + 1_000_000))
    with pytest.raises(ValueError):
        overhead.geomeans(rows + list(wall.values()))
    with pytest.raises(ValueError):
        overhead.summarize(samples, "cycles")


def test_disagreeing_checksums_are_an_error() -> None:
    samples = _samples({"w": {v: [1] for v in VARIANTS}})
    overhead.check_checksums(samples)
    bad = [s if s.variant != "data" else Sample(s.workload, s.variant, s.round, s.ns, s.cpu_ns, 8)
           for s in samples]
    with pytest.raises(BenchError, match=r"w \(data\) computed checksum 0000000000000008"):
        overhead.check_checksums(bad)


# -- workloads -------------------------------------------------------------------------------


def test_baseline_flags_drop_only_the_instrumentation() -> None:
    flags = baseline_cflags()
    assert f"-ffixed-{abi.BASE_REG}" not in flags and "-mno-red-zone" not in flags
    assert "-march=x86-64" in flags and "-fPIE" in flags
    assert set(flags) < set(abi.COMMON_CFLAGS)


def test_quick_selects_kernels_only_and_names_are_checked() -> None:
    quick = selected(None, quick=True)
    assert quick and all(w.is_kernel for w in quick)
    assert {w.name for w in selected(None, quick=False)} == set(WORKLOADS)
    assert [w.name for w in selected(["zlib"], quick=True)] == ["zlib"]
    with pytest.raises(BenchError, match="nope"):
        selected(["nope"], quick=False)


# -- result files ----------------------------------------------------------------------------


def test_result_files_are_written(tmp_path: Path) -> None:
    samples = _samples({"w1": {BASELINE: [100, 101], "data": [103, 104],
                               "code+data": [108, 109]}})
    rows = overhead.summarize(samples)
    geo = overhead.geomeans(rows)
    report.write_csv(tmp_path / "overhead.csv", rows)
    with (tmp_path / "overhead.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [r["variant"] for r in got] == ["data", "code+data"]
    assert float(got[0]["overhead_pct"]) == pytest.approx(3.0, abs=0.6)
    png = report.plot_overhead(tmp_path / "overhead.png", rows, geo)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pts = [density.DensityPoint(c, 100.0, 1.0, 40.0, 8.0, 10.0, 1.0) for c in (1, 10)]
    assert report.plot_density(tmp_path / "d.png", pts).stat().st_size > 1000
    results = {"overhead": rows, "geomean": geo, "density": pts, "x": float("nan")}
    report.write_json(tmp_path / "r.json", results)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["x"] is None and doc["overhead"][1]["variant"] == "code+data"
    md = report.summary_markdown(results)
    assert "| w1 |" in md and "**geomean**" in md
    results["failures"] = [{"workload": "w2", "stage": "overhead", "error": "fault"}]
    assert "**w2 left out** (overhead): fault" in report.summary_markdown(results)


# -- fetching --------------------------------------------------------------------------------


def _tarball(top: str = "pkg-1.0") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"int x;\n"
        info = tarfile.TarInfo(f"{top}/x.c")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path))
    return tmp_path / "bench" / "src"


def test_fetch_hash_mismatch_is_a_clear_error_and_nothing_is_cached(cache: Path) -> None:
    pkg = fetch.SourcePackage("pkg", "1:1.0-1", "pkg_1.0.orig.tar.gz", "0" * 64)

    def download(p: fetch.SourcePackage, dest: Path) -> None:
        (dest / p.tarball).write_bytes(_tarball())

    with pytest.raises(FetchError, match="pkg_1.0.orig.tar.gz has sha256 .* expected 0000"):
        fetch.source_tree(pkg, download)
    assert not (cache / pkg.tarball).exists()
    assert not (cache / pkg.key).exists()
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_fetch_caches_a_good_tarball_and_unpacks_once(cache: Path) -> None:
    data = _tarball()
    pkg = fetch.SourcePackage("pkg", "1:1.0-1", "pkg_1.0.orig.tar.gz",
                              hashlib.sha256(data).hexdigest())
    calls = []

    def download(p: fetch.SourcePackage, dest: Path) -> None:
        calls.append(p.spec)
        (dest / p.tarball).write_bytes(data)

    tree = fetch.source_tree(pkg, download)
    assert (tree / "x.c").read_bytes() == b"int x;\n"
    assert tree.name == "pkg-1.0" and ":" not in str(tree)
    assert fetch.source_tree(pkg, download) == tree
    assert calls == ["pkg=1:1.0-1"]
    # A cached tarball that was tampered with is fetched again, not used.
    (cache / pkg.tarball).write_bytes(b"tampered")
    assert fetch.fetch(pkg, download).read_bytes() == data
    assert len(calls) == 2


def test_fetch_download_without_the_tarball(cache: Path) -> None:
    pkg = fetch.SourcePackage("pkg", "1.0-1", "pkg_1.0.orig.tar.gz", "0" * 64)
    with pytest.raises(FetchError, match="did not produce pkg_1.0.orig.tar.gz"):
        fetch.fetch(pkg, lambda p, d: None)


def test_tarball_with_two_top_directories_is_refused(cache: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for top in ("a", "b"):
            info = tarfile.TarInfo(f"{top}/f")
            tf.addfile(info, io.BytesIO(b""))
    data = buf.getvalue()
    pkg = fetch.SourcePackage("two", "1", "two_1.orig.tar.gz", hashlib.sha256(data).hexdigest())
    with pytest.raises(FetchError, match="expected one top directory"):
        fetch.source_tree(pkg, lambda p, d: (d / p.tarball).write_bytes(data))
    assert not (cache / pkg.key).exists()


def test_pinned_packages_are_bookworm_versions_with_full_hashes() -> None:
    for p in fetch.PACKAGES.values():
        assert len(p.sha256) == 64 and int(p.sha256, 16) >= 0
        assert p.tarball.startswith(p.name + "_") and ".orig.tar." in p.tarball


# -- density limits --------------------------------------------------------------------------


def test_density_stops_at_what_max_map_count_allows_when_not_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tmebox.runtime import layout as lay

    # The host's own mappings as they are now: a thread that ends meanwhile (its signal
    # stack unmapped) must not move the limit between the two reads.
    maps = lay.read_host_maps()
    monkeypatch.setattr(lay, "read_host_maps", lambda: maps)
    limit = tmp_path / "max_map_count"
    monkeypatch.setattr(density, "MAP_COUNT_FILE", limit)
    monkeypatch.setattr(density.os, "geteuid", lambda: 1000)
    need_1k = density.maps_needed(1000)
    limit.write_text(f"{need_1k}\n")
    counts, note = density.fit_counts((1, 10, 100, 1000, 10000, 32000))
    assert counts == [1, 10, 100, 1000]
    assert "not root" in note and "stopped at 1000" in note and "sysctl -w" in note
    limit.write_text(f"{density.maps_needed(32000)}\n")
    assert density.fit_counts((1, 32000)) == ([1, 32000], "")


def test_density_raises_the_limit_when_root(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    limit = tmp_path / "max_map_count"
    limit.write_text("1000\n")
    monkeypatch.setattr(density, "MAP_COUNT_FILE", limit)
    monkeypatch.setattr(density.os, "geteuid", lambda: 0)
    counts, note = density.fit_counts((1, 32000))
    assert counts == [1, 32000] and "raised vm.max_map_count from 1000" in note
    assert int(limit.read_text()) >= density.maps_needed(32000) - 100


# -- the baseline runner ---------------------------------------------------------------------


def _script(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "fake-baseline"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return exe


def test_baseline_runner_reads_wall_cpu_checksum(tmp_path: Path) -> None:
    exe = _script(tmp_path, 'echo "2000 1000 00000000000000ff"\n')
    r = overhead.BaselineRunner(exe, 1)
    assert r.run_once() == (2000, 1000, 0xFF)
    r.close()


def test_baseline_that_stops_answering_is_a_bench_error(tmp_path: Path) -> None:
    exe = _script(tmp_path, 'echo "workload_init failed" >&2; exit 3\n')
    r = overhead.BaselineRunner(exe, 1)
    with pytest.raises(BenchError, match=r"fake-baseline stopped answering \(exit 3\): "
                                         r"workload_init failed"):
        r.run_once()
    r.close()


# -- docs/evaluation.md ----------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def test_evaluation_doc_examples_run() -> None:
    import re

    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    assert blocks
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} example {i + 1}", "exec"), namespace)  # noqa: S102


def test_evaluation_doc_images_exist() -> None:
    import re

    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", DOC.read_text())
    assert len(images) == 3
    for rel in images:
        assert (DOC.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel


def test_liblzma_is_gathered_without_threads_asm_or_generators(cache: Path) -> None:
    from tmebox.bench import workloads

    tree = cache / "xz-key" / "xz-5.4.1"
    files = ["liblzma/api/lzma.h", "liblzma/api/lzma/version.h", "liblzma/common/common.c",
             "liblzma/common/common.h", "liblzma/common/stream_encoder_mt.c",
             "liblzma/common/outqueue.c", "liblzma/common/hardware_physmem.c",
             "liblzma/check/crc64_fast.c", "liblzma/check/crc64_small.c",
             "liblzma/check/crc64_x86.S", "liblzma/lzma/fastpos_tablegen.c",
             "liblzma/lz/lz_encoder.c", "liblzma/rangecoder/price_table.c",
             "liblzma/delta/delta_common.c", "liblzma/simple/x86.c", "common/sysdefs.h",
             "common/tuklib_physmem.c"]
    for f in files:
        (tree / "src" / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / "src" / f).write_text(f"/* {f} */\n")
    flat = workloads._liblzma_flat(tree)
    sources = ("common.c", "crc64_fast.c", "delta_common.c", "lz_encoder.c", "price_table.c",
               "x86.c")
    assert sorted(p.name for p in flat.iterdir()) == sorted(
        [*sources, "common.h", "lzma", "lzma.h", "sysdefs.h"])
    assert (flat / "lzma" / "version.h").is_file()
    assert workloads.WORKLOADS["xz"].lib_sources(flat) == sources
    assert workloads._liblzma_flat(tree) == flat  # cached: not gathered again
