"""A sandbox's standard streams (what spawn()'s stdin/stdout/stderr became), and the
waits a runtime call makes on the host's behalf, which interrupt() and deadlines end.
"""

from __future__ import annotations

import io
import os
import select
import threading
import time

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Sink", "Source", "Waker"]


class Waker:
    """Ends a sandbox's waits (a sleep, a read from the host's stdin) early: set() by
    Sandbox.interrupt() from any thread, clear()ed when a call starts.

    The eventfd it polls is made on the first wait that needs one, so that 32K sandboxes
    that never wait hold no descriptor for it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._fd = -1

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def clear(self) -> None:
        with self._lock:
            if self._set and self._fd >= 0:
                os.read(self._fd, 8)
            self._set = False

    @property
    def is_set(self) -> bool:
        return self._set

    def wait(self, fd: int | None, until_ns: int) -> bool:
        """Wait until fd is readable (None: no fd), until_ns passes (CLOCK_MONOTONIC ns,
        0: no end) or set() is called; True if fd is readable."""
        with self._lock:
            if self._set:
                return False
            if self._fd < 0:
                self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        timeout_ms = None
        if until_ns:
            rest = until_ns - time.monotonic_ns()
            if fd is None and rest < 1_000_000:
                time.sleep(max(rest, 0) / 1e9)  # below poll()'s millisecond
                return False
            timeout_ms = max(0, -(-rest // 1_000_000))
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if fd is not None:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(timeout_ms)
        return fd is not None and any(f == fd for f, _ in ready)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Sink:
    """Where a sandbox's fd 1 or 2 goes: None (the host fd), a bytearray, or .write()."""

    def __init__(self, target: Any, host_fd: int) -> None:
        self.target = target
        self.host_fd = host_fd
        if target is None or isinstance(target, bytearray):
            self._write_obj = None
        else:
            # Text streams (sys.stdout) take bytes through their binary buffer.
            self._write_obj = getattr(target, "buffer", target)

    def write(self, data: bytes) -> int:
        if self._write_obj is None and self.target is None:
            view = memoryview(data)
            while view:
                n = os.write(self.host_fd, view)
                view = view[n:]
        elif self._write_obj is None:
            self.target += data
        else:
            try:
                self._write_obj.write(data)
            except TypeError:
                self._write_obj.write(data.decode("utf-8", "replace"))
        return len(data)


class Source:
    """Where fd 0 reads from: bytes, a file object with .read(), or None (the host's fd 0).

    Reading the host's fd 0 waits through a Waker: a deadline or interrupt() ends it.
    A file object's read() is the host's own and is called as it is.
    """

    def __init__(self, source: Any) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            source = io.BytesIO(bytes(source))
        self.source = None if source is None else getattr(source, "buffer", source)

    def read(self, n: int, waker: Waker | None = None, deadline_ns: int = 0) -> bytes | None:
        """Up to n bytes; None if the wait for the host's fd 0 ended without data."""
        if self.source is None:
            if waker is not None and not waker.wait(0, deadline_ns):
                return None
            return os.read(0, n)
        # read1 returns what is there (a pipe or terminal) instead of waiting for n bytes.
        reader = getattr(self.source, "read1", self.source.read)
        data = reader(n)
        return data.encode() if isinstance(data, str) else data
