"""Window numbering and the layout inside one window (docs/design.md "Window layout").

Pure arithmetic plus reading /proc/self/maps; the backends do the mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tmebox.errors import ImageError
from tmebox.trusted import abi
from tmebox.trusted.record import Record

__all__ = ["PAGE", "WindowLayout", "free_window_runs", "host_mapped_windows", "page_up",
           "read_host_maps", "window_base"]

PAGE = abi.PAGE_SIZE
# Windows 1 .. 32766: window 0 holds the null page and low host mappings, the
# last one the host's stack; 2^15 windows cover the 47-bit user address space.
FIRST_WINDOW = 1
LAST_WINDOW = (1 << (47 - abi.WINDOW_SHIFT)) - 2
# Windows next to a host mapping stay free so the host's heap and mmap area can grow.
HOST_MARGIN = 1


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def window_base(k: int) -> int:
    return k << abi.WINDOW_SHIFT


def host_mapped_windows(maps: Iterable[str]) -> set[int]:
    """Windows that overlap any line of a /proc/<pid>/maps listing."""
    used: set[int] = set()
    for line in maps:
        span = line.split(None, 1)[0] if line.strip() else ""
        if "-" not in span:
            continue
        lo_s, hi_s = span.split("-")
        lo, hi = int(lo_s, 16), int(hi_s, 16)
        used.update(range(lo >> abi.WINDOW_SHIFT, ((hi - 1) >> abi.WINDOW_SHIFT) + 1))
    return used


def read_host_maps() -> list[str]:
    return Path("/proc/self/maps").read_text().splitlines()


def free_window_runs(used: set[int], margin: int = HOST_MARGIN) -> Iterator[tuple[int, int]]:
    """Runs [first, end) of windows that keep `margin` windows away from every used one
    (found from the blocked windows, not by stepping through the ~32,000 windows)."""
    blocked = sorted({w + d for w in used for d in range(-margin, margin + 1)})
    k = FIRST_WINDOW
    for b in [*blocked, LAST_WINDOW + 1]:
        if b > k:
            yield k, min(b, LAST_WINDOW + 1)
        k = max(k, b + 1)
        if k > LAST_WINDOW:
            return


class WindowLayout(Record, frozen=True):
    """Window offsets of everything a sandbox of one image uses (docs/design.md)."""

    code_lo: int  # image offset 0: the runtime page, then the code (R+X, shared)
    code_hi: int
    rw_lo: int  # one RW mapping from here ...
    rw_hi: int  # ... to the top guard
    stack_bottom: int
    stack_top: int
    data: int  # where the image's data segment starts
    heap: int  # initial program break
    mmap_top: int  # the runtime's mmap area grows down from here

    @classmethod
    def for_image(cls, code_size: int, data_start: int, image_end: int, stack_bottom: int,
                  stack_top: int, name: str = "image") -> WindowLayout:
        """Place an image (sizes and offsets as image offsets) at abi.IMAGE_WINDOW_OFFSET."""
        at = abi.IMAGE_WINDOW_OFFSET
        code_hi = at + page_up(code_size)
        top = abi.WINDOW_SIZE - abi.GUARD_SIZE
        if not (code_size <= stack_bottom < stack_top <= data_start <= image_end):
            raise ImageError(
                f"{name}: segments out of order: code end {code_size:#x}, stack "
                f"[{stack_bottom:#x}, {stack_top:#x}), data [{data_start:#x}, {image_end:#x})"
            )
        if stack_bottom % PAGE or data_start % PAGE:
            raise ImageError(f"{name}: stack bottom {stack_bottom:#x} and data start "
                             f"{data_start:#x} must be page aligned")
        heap = at + page_up(image_end)
        if heap >= top:
            raise ImageError(f"{name}: image of {image_end:#x} bytes does not fit a window")
        return cls(code_lo=at, code_hi=code_hi, rw_lo=code_hi, rw_hi=top,
                   stack_bottom=at + stack_bottom, stack_top=at + stack_top,
                   data=at + data_start, heap=heap, mmap_top=top)
