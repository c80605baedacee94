"""Shared by the runtime benchmarks: a small tenant image built with `tmebox cc` (cached)."""

from __future__ import annotations

from pathlib import Path

from tmebox.programs import compile_cached
from tmebox.trusted import cache

TENANT_C = r"""
#include <stdio.h>
#include <unistd.h>
long nop(long a) { return a; }
long getpids(long n)
{
    long s = 0;
    for (long i = 0; i < n; i++)
        s += getpid();
    return s;
}
long touch(char *p, long n)
{
    long s = 0;
    for (long i = 0; i < n; i += 4096)
        s += p[i]++;
    return s;
}
int main(void) { puts("tenant"); return 0; }
"""


def tenant_image(source: str = TENANT_C, name: str = "runtime_tenant") -> Path:
    """The image of C `source`, compiled once (under $TMEBOX_CACHE/bench)."""
    folder = cache.root() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{name}.c"
    if not src.exists() or src.read_text() != source:
        src.write_text(source)
    return compile_cached(src)
