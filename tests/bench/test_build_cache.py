"""The workload build cache: a build appears whole or not at all, also with two builders at
once (compilers replaced by fakes: what is tested is the publishing, not gcc)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tmebox.bench import build
from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import VARIANTS, WORKLOADS
from tmebox.errors import TmeboxError

W = WORKLOADS["recurse"]


@pytest.fixture
def fake(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(build, "build_cache", lambda: tmp_path / "build")
    monkeypatch.setattr(build.libc, "ensure_libc", lambda mode: tmp_path)
    monkeypatch.setattr(build, "_code_bytes", lambda path: len(path.read_bytes()))
    failing: set[str] = set()

    def write(variant: str, out: Path) -> None:
        if variant in failing:
            raise TmeboxError(f"{variant} does not build")
        with out.open("wb") as f:
            for _ in range(4):  # slowly: the other builder runs meanwhile
                f.write(variant.encode() * 64)
                f.flush()
                time.sleep(0.01)

    monkeypatch.setattr(build, "build_baseline",
                        lambda files, inc, defs, out: write(VARIANTS[0], out))
    monkeypatch.setattr(build.cc, "build", lambda files, out, *, isolation, **kw:
                        write(isolation, out))
    return failing


def _whole(built: build.Built) -> None:
    for v, path in built.paths.items():
        assert path.read_bytes() == v.encode() * 256, v


def test_a_failed_build_leaves_nothing_behind(fake, tmp_path: Path) -> None:
    fake.add(VARIANTS[-1])
    with pytest.raises(BenchError, match="does not build"):
        build.build(W)
    assert list((tmp_path / "build").iterdir()) == []  # no half-built directory to reuse
    fake.clear()
    _whole(build.build(W))


def test_two_builders_at_once_both_get_whole_builds(fake, tmp_path: Path) -> None:
    got: list[build.Built] = []
    threads = [threading.Thread(target=lambda: got.append(build.build(W, rebuild=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2
    for b in got:
        _whole(b)
    assert [p.name for p in (tmp_path / "build").iterdir()] == [got[0].paths[VARIANTS[0]]
                                                                 .parent.name]
