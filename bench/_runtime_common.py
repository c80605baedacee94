"""Shared by the runtime benchmarks: a small tenant image built with `tmebox cc` (cached)."""

from __future__ import annotations

import os
from pathlib import Path

from tmebox.programs import compile_cached

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


def tenant_image() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tmebox" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / "runtime_tenant.c"
    if not src.exists() or src.read_text() != TENANT_C:
        src.write_text(TENANT_C)
    return compile_cached(src)
