"""Free space of the physical pool: sandbox regions from the top, host buffers from the
bottom."""

from __future__ import annotations


class ExtentPool:
    """Free space of the physical pool: regions from the top, host buffers from the bottom."""

    def __init__(self, lo: int, hi: int) -> None:
        self.free: list[tuple[int, int]] = [(lo, hi)]

    def take(self, n: int, align: int, from_top: bool) -> int | None:
        spans = reversed(self.free) if from_top else self.free
        for s, e in spans:
            if from_top:
                at = (e - n) & ~(align - 1)
                if at >= s:
                    break
            else:
                at = (s + align - 1) & ~(align - 1)
                if at + n <= e:
                    break
        else:
            return None
        self._remove(at, at + n)
        return at

    def _remove(self, lo: int, hi: int) -> None:
        out = []
        for s, e in self.free:
            if e <= lo or s >= hi:
                out.append((s, e))
                continue
            if s < lo:
                out.append((s, lo))
            if e > hi:
                out.append((hi, e))
        self.free = out

    def give(self, lo: int, hi: int) -> None:
        spans = sorted([*self.free, (lo, hi)])
        merged: list[tuple[int, int]] = []
        for s, e in spans:
            if merged and merged[-1][1] >= s:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        self.free = merged

    @property
    def largest(self) -> int:
        return max((e - s for s, e in self.free), default=0)

