"""Host access to a sandbox's memory, bounds-checked against what is mapped.

Sandbox pointers are full addresses inside the window (base + offset), but the
host only ever uses their low 32 bits, which is what `%gs` + 32-bit
addressing does in hardware: a pointer the sandbox forged to point elsewhere
still lands in its own window. Accesses outside the mapped parts raise
SandboxMemoryError instead of faulting the host, and every access after the sandbox
was destroyed raises SandboxDestroyed: its window may already hold the next tenant, or
nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from tmebox.errors import SandboxDestroyed, SandboxError, TmeboxError

__all__ = ["OFFSET_MASK", "GuardedMemory", "SandboxMemory", "SandboxMemoryError"]

OFFSET_MASK = 0xFFFF_FFFF


class SandboxMemoryError(SandboxError):
    """The host was asked to touch sandbox memory that is not mapped (or read-only)."""


class SandboxMemory:
    """Bounds checks shared by every backend; subclasses move the bytes.

    readable: window offsets [read_lo, hi); writable: [write_lo, hi).
    """

    def __init__(self, read_lo: int, write_lo: int, hi: int) -> None:
        self.read_lo = read_lo
        self.write_lo = write_lo
        self.hi = hi
        self._gone: str | None = None  # why the memory is closed, once it is
        # A narrower rule, where a memory_limit leaves pages unmapped (confine()).
        self._accessible: Callable[[int, int], bool] | None = None

    def confine(self, accessible: Callable[[int, int], bool]) -> None:
        """From now on the host touches only [off, off+n) for which accessible(off, n):
        the backend may leave the rest unmapped (protect())."""
        self._accessible = accessible

    def protect(self, lo: int, hi: int, accessible: bool) -> None:
        """Make window pages [lo, hi) usable or not by the sandbox (page aligned); a
        backend whose memory is bounded another way (tme: its pool region) ignores it."""

    def close(self, why: str) -> None:
        """Refuse every later access with SandboxDestroyed(why): the window is not ours."""
        self._gone = why

    def check_open(self) -> None:
        if self._gone is not None:
            raise SandboxDestroyed(self._gone)

    def check(self, addr: int, n: int, write: bool) -> int:
        """The window offset of [addr, addr+n) if the host may access it, else raise."""
        off = addr & OFFSET_MASK
        lo = self.write_lo if write else self.read_lo
        if n < 0 or off < lo or off + n > self.hi or (
                self._accessible is not None and not self._accessible(off, n)):
            what = "write" if write else "read"
            raise SandboxMemoryError(
                f"host {what} of {n} bytes at window offset {off:#x} is outside the sandbox's "
                f"{'writable' if write else 'mapped'} memory [{lo:#x}, {self.hi:#x})"
            )
        return off

    def ok(self, addr: int, n: int, write: bool) -> bool:
        off = addr & OFFSET_MASK
        return (self._gone is None and n >= 0
                and off >= (self.write_lo if write else self.read_lo) and off + n <= self.hi
                and (self._accessible is None or self._accessible(off, n)))

    # Every access below goes through check_open() first; subclasses only move bytes.
    def read(self, addr: int, n: int) -> bytes:
        self.check_open()
        return self._read(self.check(addr, n, False), n)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.check_open()
        self._write(self.check(addr, len(data), True), data)

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def write_relocated(self, addr: int, data: bytes, offsets: Sequence[int],
                        delta: int) -> None:
        """Write data at addr with delta added to the 64-bit words at those byte offsets."""
        buf = bytearray(data)
        words = memoryview(buf).cast("Q")
        for at in offsets:
            words[at // 8] = (words[at // 8] + delta) & 0xFFFF_FFFF_FFFF_FFFF
        self.write(addr, buf)

    def release(self, addr: int, n: int) -> None:
        """Give the pages of [addr, addr+n) back; they read as zero afterwards."""
        self.check_open()
        self._release(self.check(addr, n, True), n)

    def move(self, src: int, dst: int, n: int) -> None:
        """Window offsets [src, src+n) to [dst, dst+n) (page aligned, apart, both the
        sandbox's: mremap's work); the source reads as zero afterwards."""
        self._write(dst, self._read(src, n))
        self._release(src, n)

    def view(self, addr: int, n: int, writable: bool) -> memoryview:
        """A zero-copy view of [addr, addr+n) (backends that have plain memory only)."""
        self.check_open()
        return self._view(self.check(addr, n, writable), n, writable)

    def _view(self, off: int, n: int, writable: bool) -> memoryview:
        raise TmeboxError("zero-copy memory views need the native backend: the tme backend "
                          "keeps a sandbox's memory as ciphertext in the emulated pool")

    def _read(self, off: int, n: int) -> bytes:
        raise NotImplementedError

    def _write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _release(self, off: int, n: int) -> None:
        raise NotImplementedError


class GuardedMemory:
    """The host's view of one sandbox's memory (`Sandbox.memory`): every access waits
    while the sandbox runs on another thread.

    Nothing but a sandbox's own thread may write its memory while it runs: a code+data
    return reads back the slot it has just pushed (docs/design.md), so a host write
    landing in between could choose where it returns to. The runtime's own accesses
    during a run (runtime calls) use the memory directly.

    Sandbox.destroy() closes the memory under the same lock, so an access waiting for it
    raises SandboxDestroyed afterwards instead of reaching the window's next owner.
    """

    __slots__ = ("_mem", "_lock")

    def __init__(self, mem: SandboxMemory, lock: AbstractContextManager) -> None:
        self._mem = mem
        self._lock = lock

    def ok(self, addr: int, n: int, write: bool) -> bool:
        """Whether the host may access [addr, addr+n); raises once the sandbox is destroyed."""
        self._mem.check_open()
        return self._mem.ok(addr, n, write)

    def read(self, addr: int, n: int) -> bytes:
        with self._lock:
            return self._mem.read(addr, n)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._mem.write(addr, data)

    def read_u64(self, addr: int) -> int:
        with self._lock:
            return self._mem.read_u64(addr)

    def write_u64(self, addr: int, value: int) -> None:
        with self._lock:
            self._mem.write_u64(addr, value)

    def view(self, addr: int, n: int, writable: bool = False) -> memoryview:
        """A zero-copy memoryview of [addr, addr+n) (native backend), e.g. for numpy.

        Unlike read() and write() it does not wait for a running call: use it while the
        sandbox is stopped. destroy() releases it; if something still holds its buffer (a
        numpy array made from it), the window is emptied to zeros and kept out of service
        until that goes, so the view never reaches a later tenant nor crashes the host.
        """
        with self._lock:
            return self._mem.view(addr, n, writable)

    def read_cstring(self, addr: int, limit: int = 1 << 16) -> bytes:
        """The NUL-terminated string at addr (without the NUL); SandboxMemoryError if there
        is no NUL within `limit` bytes or the string runs out of readable memory."""
        out = bytearray()
        with self._lock:
            while len(out) < limit:
                # Up to the end of addr's page: the next page may not be readable.
                n = min(limit - len(out), 4096 - (addr + len(out)) % 4096)
                chunk = self._mem.read(addr + len(out), n)
                end = chunk.find(0)
                if end >= 0:
                    return bytes(out + chunk[:end])
                out += chunk
        raise SandboxMemoryError(f"no NUL within {limit} bytes of {addr:#x}")

    def write_cstring(self, addr: int, text: str | bytes) -> int:
        """Write text (str: as UTF-8) and a NUL at addr; returns the bytes written."""
        data = (text.encode() if isinstance(text, str) else bytes(text)) + b"\0"
        if b"\0" in data[:-1]:
            raise ValueError("write_cstring: the text holds a NUL byte")
        self.write(addr, data)
        return len(data)
