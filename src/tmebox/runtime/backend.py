"""The seam between the backend-independent Sandbox and a backend.

A backend (`tmebox.runtime.native`, `tmebox.runtime.tme`) prepares images and makes one
`Engine` per sandbox. The Sandbox drives an engine with enter/invoke/resume and reads the
outcome as one of the STOP_* codes; runtime calls are serviced by `tmebox.runtime.syscalls`,
identically for every backend. Nothing here is probed for: what a backend can do is in
its types (`Engine.pool` is None where host buffers come from the sandbox's own mmap area).
"""

from __future__ import annotations

from enum import StrEnum

from tmebox.runtime.layout import WindowLayout
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.memory import SandboxMemory
from tmebox.runtime.snapshot import Run, Snapshot
from tmebox.trusted.image import CpuLevel
from tmebox.trusted.record import Record
from tmebox.trusted.signature import Signature

TYPE_CHECKING = False  # (not typing's: see the protocols below)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType
    from typing import Any, Protocol, TypeVar

__all__ = ["MACHINE_CHECK", "STOPPED", "STOP_BADSTACK", "STOP_FAULT", "STOP_INTERRUPTED",
           "STOP_RETURN", "STOP_SYSCALL", "STOP_TIMEOUT", "Backend", "Engine", "FaultInfo",
           "FaultKind", "FastCall", "FastCallSpec", "Invoke", "SandboxLock", "SharedPool",
           "classify"]

# Why the engine stopped (the native helper uses the same numbers).
STOP_RETURN = 1  # the called function returned to __tmebox_rt_exit; result() holds rax
STOP_SYSCALL = 2  # runtime call; syscall() holds number and arguments
STOP_FAULT = 3  # fault() describes it
STOP_TIMEOUT = 4  # the deadline passed
STOP_BADSTACK = 5  # resume: the return address on the sandbox stack is not readable
STOP_INTERRUPTED = 6  # SIGINT while sandbox code ran (KeyboardInterrupt follows)

# FaultInfo.signo of a TME-MK integrity failure (tme backend): no POSIX signal fits it.
MACHINE_CHECK = 0x100
STOPPED = -(1 << 63)  # an invoker's result when the call did not simply return


class FaultKind(StrEnum):
    """What a SandboxFault was (the values are what the CLI and docs print)."""

    SEGV = "segv"  # an access outside the sandbox's memory, or a protection violation
    STACK_OVERFLOW = "stack-overflow"  # a segv just below the stack's end
    BUS_ERROR = "bus-error"
    DIVIDE_ERROR = "divide-error"  # #DE, and x87/SSE exceptions (#MF, #XM)
    ILLEGAL_INSTRUCTION = "illegal-instruction"  # #UD, a stray int3
    MACHINE_CHECK = "machine-check"  # tme backend: an integrity (MAC) failure


class FaultInfo(Record, frozen=True):
    """A fault inside sandbox code, in window offsets (low 32 bits of the addresses)."""

    signo: int
    address: int  # faulting data address (si_addr) as a window offset
    rip: int  # window offset of the faulting instruction
    rsp: int  # window offset of the stack pointer at the fault


def classify(fault: FaultInfo, stack_bottom: int) -> FaultKind:
    """The SandboxFault kind of a fault; stack_bottom is the window offset of the stack's end.

    The main stack grows down into the read-only code (docs/design.md), so a
    fault below the stack's end while %rsp has reached it (a faulting push
    leaves %rsp at the end itself) is an overflow.
    """
    import signal  # here: its enums would cost every start-up ~0.5 ms

    if fault.signo == signal.SIGSEGV:
        if fault.address < stack_bottom and fault.rsp <= stack_bottom + 4096:
            return FaultKind.STACK_OVERFLOW
        return FaultKind.SEGV
    if fault.signo == signal.SIGBUS:
        return FaultKind.BUS_ERROR
    if fault.signo == MACHINE_CHECK:
        return FaultKind.MACHINE_CHECK
    if fault.signo == signal.SIGFPE:
        return FaultKind.DIVIDE_ERROR
    # SIGILL, and SIGTRAP from the int3 that fills every unused runtime-page slot
    return FaultKind.ILLEGAL_INSTRUCTION


class FastCallSpec(Record):
    """What a C Sandbox.call needs (Engine.fast_call): where calls start and return, the
    sandbox's lock and host-call list, and the Python code that takes over.

    exports maps a name to the engine's entry for it (Engine.fast_export), filled in as
    calls are first made; slow(name, *args, **kw) is the whole Python call(); finish(name,
    stop) drives a call that stopped for anything but its return and gives %rax.
    """

    rsp: int
    ret: int
    thunk: int  # the call thunk's address (0: the image has none)
    lock: SandboxLock
    nested: list[Any]
    slow: Callable[..., Any]
    finish: Callable[[str, int], int]
    exports: dict[str, object]
    # Host functions by import index, with their signatures, and the caller they get first;
    # host_result(i, value) -> bits, host_error(i, exc) -> HostError and host_done(i, saved)
    # are api.py's conversion, error and end of a host call, for the cases C leaves to it.
    imports: tuple[tuple[Any, Signature], ...]
    caller: object
    host_result: Callable[[int, object], int]
    host_error: Callable[[int, BaseException], BaseException]
    host_done: Callable[[int, object], None]


# The seam's protocols are the type checker's (mypy checks both backends against them);
# at run time nothing needs them, and defining them would cost every start-up `typing`.
if TYPE_CHECKING:
    # Sandbox.call's fast path: fn(handle, rip, rsp, return_to, a0, ..., a5) -> rax, signed.
    Invoke = Callable[..., int]


    class FastCall(Protocol):
        """Sandbox.call in C: ready says whether the sandbox is parked, timeout is its own."""

        ready: bool
        timeout: float | None

        def __call__(self, name: str, *args: Any) -> Any: ...


    class SandboxLock(Protocol):
        """A re-entrant lock (threading.RLock's interface)."""

        def acquire(self, blocking: bool = True) -> bool: ...

        def release(self) -> None: ...

        def __enter__(self) -> bool: ...

        def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                     tb: TracebackType | None, /) -> None: ...


    class Engine(Protocol):
        """One sandbox's execution state on a backend."""

        @property
        def memory(self) -> SandboxMemory:
            """The window's memory as the runtime accesses it (window offsets)."""

        @property
        def base(self) -> int:
            """Window base: the full address of window offset 0."""

        @property
        def layout(self) -> WindowLayout:
            """Where this sandbox's code, data, stack and heap are in its window."""

        @property
        def pool(self) -> SharedPool | None:
            """Host buffers from a pool shared by sandboxes, or None: from the sandbox's heap."""

        def enter(self, rip: int, rsp: int, args: tuple[int, ...], return_to: int | None) -> int:
            """Start fresh at full address rip with registers cleared and args in the ABI registers.

            If return_to is given it is pushed (below rsp) as the return address.
            """

        def invoker(self) -> tuple[Invoke, object]:
            """(fn, handle): fn(handle, rip, rsp, return_to, a0, ..., a5) enters like enter().

            Arguments are signed 64-bit ints. fn returns STOPPED when the call did not
            simply return (then, or if rax happened to equal STOPPED, last_stop() says why).
            """

        def new_lock(self) -> SandboxLock:
            """The sandbox's re-entrant lock (the native fast path takes it from C)."""

        def fast_call(self, spec: FastCallSpec) -> FastCall | None:
            """A C implementation of Sandbox.call for spec, or None (the Python one serves)."""

        def call_c_host(self, address: int, args: Sequence[object]) -> int:
            """Run a CHostFunction on integer args (the caller is this sandbox); its result."""

        def fast_export(self, rip: int, sig: Signature | None) -> object | None:
            """The fast path's entry for an export at rip with sig (None: untyped), or None
            if only the Python path can call it."""

        def last_stop(self) -> int:
            """The STOP_* code of the last invoker call."""

        def resume(self, result: int) -> int:
            """Finish the pending runtime call with result and continue.

            The return address is popped from the sandbox stack (STOP_BADSTACK unless the stack
            pointer is in the sandbox's RW memory); execution continues at window base + its low
            32 bits, masked to a bundle start in code+data mode, with %rax = result, %rcx = 0 and
            %r11 = the address execution resumes at (the native helper jumps through it): the two
            registers a `syscall` clobbers hold nothing of the host's. Every other register is as
            the sandbox left it.
            """

        def result(self) -> int:
            """rax after STOP_RETURN, as an unsigned 64-bit value."""

        def syscall(self) -> tuple[int, tuple[int, int, int, int, int, int]]:
            """Number and arguments of the pending runtime call (STOP_SYSCALL)."""

        def stack_pointer(self) -> int:
            """%rsp (full address) when the engine last stopped."""

        def fault(self) -> FaultInfo:
            """What went wrong (STOP_FAULT, STOP_TIMEOUT, STOP_BADSTACK)."""

        def deadline(self) -> int:
            """The current deadline (CLOCK_MONOTONIC ns), 0 if none."""

        def set_deadline(self, seconds: float | None) -> None:
            """Limit the next top-level entry (including its runtime calls) to seconds from now."""

        def interrupt(self) -> None:
            """From any thread: stop the run under way (as a timeout) and every later one."""

        def interrupted(self) -> bool:
            """Whether interrupt() was called (a new engine starts without)."""

        def save(self) -> object:
            """A snapshot of the register state (to resume a parked sandbox later)."""

        def restore(self, snapshot: object) -> None:
            """Go back to a snapshot taken by save()."""

        def mark_fd(self, fd: int, host: int, readable: bool, writable: bool, seekable: bool,
                    whole: bool) -> None:
            """Guest fd is host descriptor `host` for the runtime calls the backend services
            itself (host -1: it is not; files.direct_marks says which are)."""

        def keep_runs(self, runs: Sequence[Run]) -> object:
            """What load_runs needs of a snapshot's pages, made once (native: a sealed memfd)."""

        def load_runs(self, runs: Sequence[Run], kept: object, origin: int) -> None:
            """A snapshot's pages into this window, at code_lo + run.at, with origin added to
            every pointer word (native: mapped copy-on-write from keep_runs's memfd)."""

        def rebase(self, saved: object, lo: int, hi: int, delta: int) -> object:
            """save()d state of another sandbox of the same image, made this one's: every
            general register and %rip in [lo, hi) moved by delta, the window base this one's."""

        def destroy(self) -> None:
            """Release the window; the engine is unusable afterwards."""


    class SharedPool(Protocol):
        """Host buffers as lines of a pool that every sandbox's window aliases (tme backend)."""

        def alloc(self, n: int) -> int:
            """n bytes for the sandbox; returns its full address. Raises SandboxError if full."""

        def free(self, addr: int, n: int) -> None:
            """Give back a buffer from alloc()."""

        def transfer(self, addr: int, n: int, to: Engine) -> int:
            """Hand the buffer to sandbox `to` (same backend); returns its address there."""


    ImageT = TypeVar("ImageT")


    class Backend(Protocol[ImageT]):
        """Prepares images and runs sandboxes of them; ImageT is its prepared-image type."""

        name: str

        def cpu_level(self) -> CpuLevel:
            """The highest CPU level whose instructions this backend's CPU runs."""

        def prepare(self, plan: ImagePlan) -> ImageT:
            """The backend's copy of a verified image (native: a sealed code memfd)."""

        def release_image(self, image: ImageT) -> None:
            """Free what prepare() made, once no sandbox of it is alive."""

        def new_engine(self, image: ImageT, snapshot: Snapshot | None = None) -> Engine:
            """A fresh sandbox of image (raises OutOfSandboxes when no window is free); for a
            snapshot the image's data need not be copied in (load_runs puts its pages in),
            and a backend may hand out a window that holds them already."""

        def close(self) -> None:
            """Release process-wide resources; no engine of this backend is alive any more."""
