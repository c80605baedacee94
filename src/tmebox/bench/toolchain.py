"""Compiler and verifier throughput on the workload builds.

cc seconds are the wall time of each build when it was made (cached with it).
The verifier is timed on each sandbox image twice in a row: cold (its
per-instruction memo emptied first, as in a fresh process) and warm (the same
image again, as when the runtime sees a near-identical image).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tmebox.bench.build import Built
from tmebox.bench.errors import BenchError
from tmebox.bench.workloads import BASELINE


@dataclass(frozen=True)
class ToolchainRow:
    workload: str
    variant: str
    cc_seconds: float
    code_bytes: int
    instructions: int | None
    verify_cold_mib_s: float | None
    verify_warm_mib_s: float | None


def _forget_memo() -> None:
    from tmebox.trusted import verifier

    kinds = getattr(verifier, "_KINDS", None)
    if isinstance(kinds, dict):
        for memo in kinds.values():
            memo.clear()


def _verify_seconds(path: Path) -> tuple[float, int, int]:
    from tmebox.trusted.image import Image
    from tmebox.trusted.verifier import verify_image

    image = Image.load(path)
    t0 = time.perf_counter()
    verdict = verify_image(image)
    dt = time.perf_counter() - t0
    if not verdict.ok:
        raise BenchError(f"the verifier rejects {path}: {verdict.summary()}")
    return dt, verdict.code_bytes, verdict.instructions


def measure(builds: list[Built]) -> list[ToolchainRow]:
    rows = []
    for b in builds:
        for v, path in b.paths.items():
            cold = warm = None
            insns = None
            if v != BASELINE:
                _forget_memo()
                t_cold, nbytes, insns = _verify_seconds(path)
                t_warm, _, _ = _verify_seconds(path)
                cold, warm = nbytes / t_cold / (1 << 20), nbytes / t_warm / (1 << 20)
            rows.append(ToolchainRow(b.workload.name, v, b.cc_seconds[v], b.code_bytes[v],
                                     insns, cold, warm))
    return rows
