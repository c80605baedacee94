"""Snapshots: a parked sandbox's memory and registers, to start other sandboxes from.

Sandbox code addresses memory by the low 32 bits of a pointer (%gs + 32-bit addressing),
but the pointers it stores are full addresses (window base + offset): `lea` and `call`
through %rip give full ones, and so do the runtime's mmap and brk. A sandbox started from
a snapshot lives in another window (and, on the tme backend, at another offset in it), so
the stored pointers are moved there: every aligned 64-bit word whose value lies in the
part of the old window the sandbox used (code, data, stack, heap, mmap areas) is taken for
a pointer and moved by the distance between the two sandboxes. An integer that happens
to have such a value (its upper half the old window's number, its lower half an offset
the sandbox used) is moved too: docs/runtime.md, "Snapshots", says what that means.
A wrong move can only change the new sandbox's own data: it never points out of its window.

Only pages that are not all zeros are kept, except the image's own data pages, which a new
window starts with its initial contents in.
"""

from __future__ import annotations

from array import array

from tmebox.runtime.layout import PAGE, WindowLayout
from tmebox.runtime.memory import SandboxMemory
from tmebox.trusted.record import Record

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from tmebox.runtime.api import LoadedImage

__all__ = ["Run", "Snapshot", "capture_runs", "find_pointers"]

_ZERO = bytes(PAGE)


class Run(Record, frozen=True):
    """Consecutive pages of a snapshot: offset from code_lo, bytes with every pointer word
    made an offset from code_lo, and where those words are (byte offsets in data)."""

    at: int
    data: bytes
    pointers: array


class Snapshot(Record, frozen=True, eq=False):
    """What Sandbox.snapshot() gives and Runtime.spawn() takes (docs/runtime.md,
    "Snapshots"). Offsets are from the sandbox's code_lo, full addresses are made such."""

    image: LoadedImage
    runs: tuple[Run, ...]
    registers: object  # the engine's parked state as it was (Engine.rebase moves it)
    lo: int  # the full addresses the sandbox used: [lo, hi)
    hi: int
    brk: int
    maps: tuple[tuple[int, int], ...]
    call_rsp: int
    cwd: tuple[bytes, ...]
    kept: object  # the backend's copy of the runs (Engine.keep_runs)

    @property
    def size(self) -> int:
        """Bytes of memory kept."""
        return sum(len(r.data) for r in self.runs)


def find_pointers(data: bytes, start: int, lo: int, hi: int) -> array:
    """Byte offsets of the aligned words in data (which starts at full address start,
    8-aligned) whose value is in [lo, hi), a range inside one window."""
    hi_word = (lo >> 32).to_bytes(4, "little")
    out = array("I")
    i = data.find(hi_word, 4)
    while i >= 0:
        if i % 8 == 4:  # the upper half of an aligned word: look at the whole of it
            value = int.from_bytes(data[i - 4:i + 4], "little")
            if lo <= value < hi:
                out.append(i - 4)
            i = data.find(hi_word, i + 4)
        else:
            i = data.find(hi_word, i + 1)
    return out


def capture_runs(mem: SandboxMemory, layout: WindowLayout, base: int,
                 used: list[tuple[int, int]]) -> tuple[Run, ...]:
    """The used memory of a sandbox as runs of non-zero (or image data) pages, pointers
    made offsets from base + code_lo."""
    origin = base + layout.code_lo
    lo, hi = origin, base + max(e for _, e in used)
    runs: list[Run] = []
    for start, end in used:
        page = start
        while page < end:
            first = page
            chunk = bytearray()
            while page < end:
                data = mem.read(page, PAGE)
                if data == _ZERO and not layout.data <= page < layout.heap:
                    break
                chunk += data
                page += PAGE
            if chunk:
                pointers = find_pointers(chunk, base + first, lo, hi)
                view = memoryview(chunk).cast("Q")
                for at in pointers:
                    view[at // 8] -= origin
                runs.append(Run(first - layout.code_lo, bytes(chunk), pointers))
            page += PAGE
    return tuple(runs)
