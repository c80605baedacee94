"""The seam between the backend-independent Sandbox and a backend's execution engine.

A backend (native today, the emulated TME-MK backend later) provides an
`Engine` per sandbox. The Sandbox drives it with three operations and
reads the outcome as one of the STOP_* codes; runtime calls are serviced by
`tmebox.runtime.syscalls`, identically for every backend.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tmebox.runtime.memory import SandboxMemory

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


@dataclass(frozen=True)
class FaultInfo:
    """A fault inside sandbox code, in window offsets (low 32 bits of the addresses)."""

    signo: int
    address: int  # faulting data address (si_addr) as a window offset
    rip: int  # window offset of the faulting instruction
    rsp: int  # window offset of the stack pointer at the fault


def classify(fault: FaultInfo, stack_bottom: int) -> str:
    """The SandboxFault kind of a fault; stack_bottom is the window offset of the stack's end.

    The main stack grows down into the read-only code (docs/design.md), so a
    fault below the stack's end while %rsp has reached it (a faulting push
    leaves %rsp at the end itself) is an overflow.
    """
    if fault.signo == signal.SIGSEGV:
        if fault.address < stack_bottom and fault.rsp <= stack_bottom + 4096:
            return "stack-overflow"
        return "segv"
    if fault.signo == signal.SIGBUS:
        return "bus-error"
    if fault.signo == MACHINE_CHECK:
        return "machine-check"
    if fault.signo == signal.SIGFPE:
        return "divide-error"
    # SIGILL, and SIGTRAP from the int3 that fills every unused runtime-page slot
    return "illegal-instruction"


class Engine(Protocol):
    """One sandbox's execution state on a backend."""

    memory: SandboxMemory
    base: int  # window base (full address of window offset 0)

    def enter(self, rip: int, rsp: int, args: tuple[int, ...], return_to: int | None) -> int:
        """Start fresh at full address rip with registers cleared and args in the ABI registers.

        If return_to is given it is pushed (below rsp) as the return address.
        """

    def invoker(self) -> Callable[..., int]:
        """The fast path of Sandbox.call: f(rip, rsp, return_to, a0, ..., a5) -> rax.

        Arguments are signed 64-bit ints. It returns STOPPED when the call did not
        simply return (then, or if rax happened to equal STOPPED, last_stop() says why).
        """

    # Optional: raw_invoker() -> (fn, handle), called as fn(handle, rip, rsp, return_to,
    # a0, ..., a5) with invoker()'s meaning, saves a call layer (the native backend has it).

    def last_stop(self) -> int:
        """The STOP_* code of the last invoker call."""

    def resume(self, result: int) -> int:
        """Finish the pending runtime call with result and continue."""

    def result(self) -> int:
        """rax after STOP_RETURN, as an unsigned 64-bit value."""

    def syscall(self) -> tuple[int, tuple[int, int, int, int, int, int]]:
        """Number and arguments of the pending runtime call (STOP_SYSCALL)."""

    def stack_pointer(self) -> int:
        """%rsp (full address) when the engine last stopped."""

    def fault(self) -> FaultInfo:
        """What went wrong (STOP_FAULT, STOP_TIMEOUT, STOP_BADSTACK)."""

    def set_deadline(self, seconds: float | None) -> None:
        """Limit the next top-level entry (including its runtime calls) to seconds from now."""

    def save(self) -> object:
        """A snapshot of the register state (to resume a parked sandbox later)."""

    def restore(self, snapshot: object) -> None:
        """Go back to a snapshot taken by save()."""

    def destroy(self) -> None:
        """Release the window; the engine is unusable afterwards."""
