"""A fuzzing campaign: generate, keep what the verifier accepts, run it on the CPU, count."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import iced_x86 as ix

from tmebox.fuzz import oracle
from tmebox.fuzz.generate import CODE_OFFSET, LEVEL, Candidate, Generator
from tmebox.fuzz.oracle import Oracle, Outcome, Result, Sample
from tmebox.trusted import abi, verifier

__all__ = ["BASE_PERIOD", "Escape", "Stats", "listing", "run"]

BASE_PERIOD = 512  # sequences per window base before the next base (a fresh child)
_UNCONFINED_IN_DATA = frozenset((ix.FlowControl.INDIRECT_BRANCH, ix.FlowControl.INDIRECT_CALL,
                                 ix.FlowControl.RETURN))


@dataclass(frozen=True)
class Escape:
    """An accepted sequence that the CPU ran out of its window, with everything to replay it."""

    candidate: Candidate
    sample: Sample
    result: Result

    def report(self) -> str:
        c, s, r = self.candidate, self.sample, self.result
        regs = ", ".join(f"{name}={value:#x}{'+base' if s.rel_mask >> i & 1 else ''}"
                         for i, (name, value) in enumerate(zip(oracle.REGISTERS, s.regs,
                                                               strict=True)))
        base = r.base or oracle.BASES[s.base_index]
        return "\n".join([
            f"ESCAPE ({c.mode}): {r.summary()}",
            f"  code: {c.code.hex()}",
            f"  start: +{c.start:#x}  rflags: {s.rflags:#x}  window base: {base:#x}",
            f"  regs: {regs}",
            *("  " + line for line in listing(c.code, base, r.rip))])


@dataclass
class Stats:
    generated: Counter[str] = field(default_factory=Counter)  # per mode
    verified: int = 0  # verify_code calls (a rejected candidate is repaired and verified again)
    accepted: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # accepted in data mode but with ret/indirect branches: not confined there
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # of contained faults, by kind
    escapes: list[Escape] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def executed(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        gen, acc = sum(self.generated.values()), sum(self.accepted.values())
        per_mode = ", ".join(f"{m}: {self.accepted[m]:,}/{self.generated[m]:,}"
                             for m in sorted(self.generated))
        outcomes = ", ".join(f"{o.value} {self.outcomes[o]:,}" for o in Outcome)
        rate = gen / self.seconds if self.seconds else 0.0
        return (f"{gen:,} generated ({self.verified:,} verified), {acc:,} accepted ({per_mode}), "
                f"{self.executed:,} executed ({outcomes}), {self.skipped:,} data-mode skipped; "
                f"{self.seconds:.1f} s, {rate:,.0f} sequences/s")


def run(sequences: int, seed: int, modes: Iterable[str] = abi.ISOLATION_MODES,
        progress: Callable[[Stats], None] | None = None, batch: int = oracle.BATCH) -> Stats:
    """Generate `sequences` candidates from `seed`, run the accepted ones, return the counts."""
    modes = tuple(modes)
    gen = Generator(seed)
    stats = Stats()
    t0 = time.monotonic()
    pending: list[tuple[Candidate, Sample]] = []
    with Oracle() as cpu:
        for i in range(sequences):
            mode = modes[i % len(modes)]
            candidate, verdict, attempts = gen.candidate(mode, _verify)
            regs, rel_mask, rflags = gen.state()
            stats.generated[mode] += 1
            stats.verified += attempts
            if not verdict.ok:
                continue
            stats.accepted[mode] += 1
            if mode == "data" and _has_unconfined_branch(candidate.code):
                stats.skipped += 1
                continue
            pending.append((candidate, Sample(candidate.code, regs, rel_mask, rflags,
                                              candidate.start,
                                              (i // BASE_PERIOD) % len(oracle.BASES))))
            if len(pending) >= batch or i == sequences - 1:
                _execute(cpu, pending, stats)
                pending = []
                stats.seconds = time.monotonic() - t0
                if progress:
                    progress(stats)
        if pending:
            _execute(cpu, pending, stats)
    stats.seconds = time.monotonic() - t0
    return stats


def _verify(candidate: Candidate) -> verifier.Verdict:
    return verifier.verify_code(candidate.code, code_offset=CODE_OFFSET,
                                image_size=oracle.IMAGE_SIZE, isolation=candidate.mode,
                                entries={"start": CODE_OFFSET + candidate.start},
                                level=LEVEL)


def _execute(cpu: Oracle, pending: list[tuple[Candidate, Sample]], stats: Stats) -> None:
    results = cpu.run([s for _, s in pending])
    for (candidate, sample), result in zip(pending, results, strict=True):
        stats.outcomes[result.outcome] += 1
        if result.outcome == Outcome.FAULT:
            stats.reasons[result.reason.split(" at ")[0]] += 1
        elif result.outcome == Outcome.ESCAPE:
            stats.escapes.append(Escape(candidate, sample, result))


def _has_unconfined_branch(code: bytes) -> bool:
    """Data mode does not confine ret and indirect branches (docs/design.md): not run."""
    return any(ins.flow_control in _UNCONFINED_IN_DATA for ins in ix.Decoder(64, code))


def listing(code: bytes, base: int, rip: int = 0) -> list[str]:
    """The code as iced-x86 (Intel decoding) sees it, at its window address; `>` marks rip."""
    start = base + oracle.CODE_ADDRESS_OFFSET
    fmt = ix.Formatter(ix.FormatterSyntax.INTEL)
    lines = []
    for ins in ix.Decoder(64, code, ip=start):
        off = ins.ip - start
        mark = ">" if ins.ip <= rip < ins.ip + ins.len else " "
        lines.append(f"{mark} {ins.ip:#x}  {code[off:off + ins.len].hex():<30} {fmt.format(ins)}")
    return lines
