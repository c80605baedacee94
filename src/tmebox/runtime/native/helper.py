"""The compiled native helper (`tmebox.runtime._native`), checked once at import."""

from __future__ import annotations

import os

from tmebox.errors import TmeboxError

try:
    from tmebox.runtime import _native
    from tmebox.runtime._native import ffi, lib
except ImportError as e:  # pragma: no cover - depends on the installation
    raise TmeboxError(
        "the native sandbox helper is not built; run `pip install -e .` in the tmebox "
        f"checkout ({e})"
    ) from e

__all__ = ["CTX_SIZE", "Export", "FastCallType", "Host", "LockType", "ffi", "lib", "mmap"]

MAP_FAILED = (1 << 64) - 1

_init_status = lib.tmebox_init()
if _init_status != 0:
    raise TmeboxError(
        f"the native sandbox helper cannot run here ({os.strerror(-_init_status)}): it needs "
        "x86-64 with FSGSBASE enabled by the kernel and XSAVE"
    )
CTX_SIZE = lib.tmebox_ctx_size()
# tmebox_fast.c's types (Sandbox.call in C, the sandbox lock) join the module now.
if lib.tmebox_fast_register() != 0:  # pragma: no cover - only if the module is broken
    raise TmeboxError("the native sandbox helper's call path could not be set up")
Export, FastCallType, Host = _native.Export, _native.FastCall, _native.Host
LockType = _native.SandboxLock


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    p = lib.mmap(ffi.cast("void *", addr), length, prot, flags, fd, offset)
    got = int(ffi.cast("uintptr_t", p))
    if got == MAP_FAILED:
        err = ffi.errno
        raise OSError(err, f"mmap({addr:#x}, {length:#x}): {os.strerror(err)}")
    return got


