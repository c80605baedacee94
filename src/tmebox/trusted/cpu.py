"""The CPU level (trusted.image.CpuLevel) this host can run, from /proc/cpuinfo.

The kernel lists a feature there only when it has enabled it (AVX disappears when the kernel
does not manage the AVX state with XSAVE), which is what an image needs: an x86-64-v3 image's
code and the sandbox libc's __builtin_cpu_supports rely on it (toolchain/data/cpu_model.c).
"""

from __future__ import annotations

import functools
from pathlib import Path

from tmebox.trusted.image import CpuLevel

__all__ = ["LEVEL_FLAGS", "host_level", "level_of_flags"]

# The flags each level adds, by the names /proc/cpuinfo uses (pni: SSE3, abm: LZCNT).
LEVEL_FLAGS = {
    CpuLevel.X86_64: frozenset(("fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2")),
    CpuLevel.V2: frozenset(("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
    CpuLevel.V3: frozenset(("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe",
                            "xsave")),
}


def level_of_flags(flags: set[str] | frozenset[str]) -> CpuLevel:
    """The highest level all of whose flags (and those of the levels below) are in flags."""
    best = CpuLevel.X86_64
    needed: set[str] = set()
    for level in CpuLevel:
        needed |= LEVEL_FLAGS[level]
        if not needed <= flags:
            break
        best = level
    return best


@functools.cache
def host_level() -> CpuLevel:
    """This machine's level (x86-64 when /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuLevel.X86_64
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return level_of_flags(frozenset(value.split()))
    return CpuLevel.X86_64
