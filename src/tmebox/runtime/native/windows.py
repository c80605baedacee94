"""The process-wide pool of 4 GiB windows, reserved PROT_NONE in geometrically growing runs."""

from __future__ import annotations

import errno
import heapq
import threading
from itertools import islice
from pathlib import Path

from tmebox.errors import OutOfSandboxes
from tmebox.runtime import layout as lay
from tmebox.runtime.native.helper import mmap
from tmebox.trusted import abi

__all__ = ["MAPS_PER_WINDOW", "MAP_COUNT_SLACK", "POOL", "WindowPool", "check_map_count"]

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x4000, 0x100000
MADV_DONTNEED = 4
RESERVE_CHUNK = 64  # the pool's first growth step, in windows
MAX_GROWTH = 8192  # windows (32 TiB) one growth step reserves at most
WARM_WINDOWS = 256  # per image: destroyed windows kept mapped for its next spawns
MAPS_PER_WINDOW = 3  # code, RW, and the PROT_NONE guard between windows
MAP_COUNT_SLACK = 2000  # mappings the host itself may still create


class WindowPool:
    """Process-wide reservation of free windows (all Runtimes share it).

    The pool grows geometrically: each growth step reserves as many windows as it
    already holds (at least RESERVE_CHUNK, at most MAX_GROWTH), so n windows cost
    O(log n) reads of /proc/self/maps. That read is only needed to keep away from the
    host's mappings; the pool's own reservations are its own record (`_reserved`), and a
    host mapping made after the read makes MAP_FIXED_NOREPLACE fail with EEXIST.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[int] = []  # a min-heap, so acquire() hands out the lowest window
        self._reserved: set[int] = set()
        self._frozen: frozenset[int] = frozenset()
        self.maps_reads = 0  # growth steps that read the host's maps (tests check it)

    @property
    def windows(self) -> frozenset[int]:
        """Every window reserved so far (free or in use)."""
        return self._frozen

    @property
    def free_count(self) -> int:
        return len(self._free)

    def ensure(self, n: int, limit: int | None = None) -> None:
        """Reserve windows until at least n are free.

        A growth step reserves up to `limit` windows beyond the n (the caller's
        max_sandboxes), so a small Runtime does not take address space it cannot use.
        """
        with self._lock:
            if len(self._free) >= n:
                return
            extra = min(max(RESERVE_CHUNK, len(self._reserved)), MAX_GROWTH)
            if limit is not None:
                extra = min(extra, max(limit - n, 0))
            want = n - len(self._free) + extra
            self.maps_reads += 1
            used = lay.host_mapped_windows(lay.read_host_maps()) - self._reserved
            got: list[int] = []
            for start, end in lay.free_window_runs(used):
                # (only as many as wanted: a run can be ~20,000 windows long)
                run = list(islice((k for k in range(start, end) if k not in self._reserved),
                                  want - len(got)))
                if not run:
                    continue
                got += self._reserve_run(run)
                if len(got) >= want:
                    break
            if got:
                self._reserved.update(got)
                self._frozen = frozenset(self._reserved)
                self._free += got
                heapq.heapify(self._free)
            if len(self._free) < n:
                raise OutOfSandboxes(
                    f"only {len(self._free)} windows of 4 GiB are free in this process's "
                    f"address space, {n} were asked for")

    @staticmethod
    def _reserve_run(run: list[int]) -> list[int]:
        # A run may have holes where windows are already ours; map contiguous pieces.
        got: list[int] = []
        i = 0
        while i < len(run):
            j = i
            while j + 1 < len(run) and run[j + 1] == run[j] + 1:
                j += 1
            first, count = run[i], j - i + 1
            try:
                mmap(lay.window_base(first), count << abi.WINDOW_SHIFT, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
                got += range(first, first + count)
            except OSError as e:
                if e.errno != errno.EEXIST or count == 1:
                    if e.errno not in (errno.EEXIST, errno.ENOMEM):
                        raise
                else:
                    # Someone mapped into the run since we read the maps: go one by one.
                    got += WindowPool._reserve_run_each(range(first, first + count))
            i = j + 1
        return got

    @staticmethod
    def _reserve_run_each(windows: range) -> list[int]:
        got = []
        for k in windows:
            try:
                mmap(lay.window_base(k), abi.WINDOW_SIZE, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
                got.append(k)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOMEM):
                    raise
        return got

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise OutOfSandboxes("no reserved window is free")
            return heapq.heappop(self._free)

    def release(self, k: int) -> None:
        """Drop everything mapped in window k and hand it out again later."""
        base = lay.window_base(k)
        mmap(base + abi.GUARD_SIZE, abi.WINDOW_SIZE - 2 * abi.GUARD_SIZE, PROT_NONE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED)
        with self._lock:
            heapq.heappush(self._free, k)


POOL = WindowPool()


def check_map_count(max_sandboxes: int) -> None:
    """Raise OutOfSandboxes (with the fix) if vm.max_map_count cannot hold that many windows."""
    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    current = len(lay.read_host_maps())
    need = current + MAPS_PER_WINDOW * max_sandboxes + MAP_COUNT_SLACK
    if need > limit:
        raise OutOfSandboxes(
            f"{max_sandboxes} sandboxes need about {need} memory mappings but "
            f"vm.max_map_count is {limit}; run `sysctl -w vm.max_map_count={need}` as root"
        )


