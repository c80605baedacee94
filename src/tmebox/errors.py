"""Every error tmebox raises on purpose; the CLI prints them as one line."""

from __future__ import annotations

from tmebox.trusted.errors import ImageError, TmeboxError, VerificationError

# Not typing.TYPE_CHECKING: typing imports re, and the rewriter must start light.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tmebox.runtime.backend import FaultKind

__all__ = ["CompileError", "HostError", "ImageError", "IsolationError", "LibcError",
           "MissingImport", "OutOfSandboxes", "RewriteError", "RuntimeClosed",
           "SandboxDestroyed", "SandboxError", "SandboxExited", "SandboxFault",
           "SandboxInterrupted", "SandboxTimeout", "TmeboxError", "ToolchainError",
           "VerificationError"]


class ToolchainError(TmeboxError):
    """Compiling, rewriting, assembling or linking a sandbox image failed."""


class CompileError(ToolchainError):
    """A tool the toolchain ran (gcc, as, ld) failed: str() is its first error line and all
    it printed, `output` the latter alone (which the CLI shows once, as the tool would)."""

    def __init__(self, what: str, first: str, output: str) -> None:
        super().__init__(f"{what}: {first}\n{output}" if output else f"{what}: {first}")
        self.what = what
        self.output = output


class RewriteError(ToolchainError):
    """The rewriter met an instruction it cannot make safe (file:line named)."""


class LibcError(ToolchainError):
    """Fetching or building the sandbox libc failed."""


class SandboxError(TmeboxError):
    """Base of errors raised by a running sandbox."""


class SandboxFault(SandboxError):
    """The sandbox faulted; the host and every other sandbox keep running."""

    def __init__(self, kind: FaultKind, address: int | None = None, instruction: str | None = None,
                 detail: str = "") -> None:
        self.kind = kind
        self.address = address
        self.instruction = instruction
        parts = [f"sandbox fault: {kind}"]
        if address is not None:
            parts.append(f"at {address:#x}")
        if instruction:
            parts.append(f"({instruction})")
        if detail:
            parts.append(f"- {detail}")
        super().__init__(" ".join(parts))


class SandboxTimeout(SandboxError):
    """The sandbox ran past its time limit and was stopped."""


class SandboxInterrupted(SandboxError):
    """Sandbox.interrupt() ended the sandbox's call (a sibling of SandboxTimeout)."""


class SandboxExited(SandboxError):
    """The sandbox has exited and cannot run main() again."""


class SandboxDestroyed(SandboxError):
    """The sandbox was destroyed (or its Runtime closed): its window belongs to it no more."""


class RuntimeClosed(TmeboxError):
    """The Runtime was closed: its images and sandboxes are released."""


class IsolationError(VerificationError):
    """An image's isolation mode is weaker than the Runtime's min_isolation allows."""


class CpuLevelError(TmeboxError):
    """An image needs a CPU level (x86-64-v2, -v3) that the backend's CPU does not have."""


class HostError(SandboxError):
    """A host function the sandbox called raised; __cause__ is that exception. The call
    into the sandbox that led there is over; the host and other sandboxes are unaffected."""


class MissingImport(TmeboxError):
    """An image calls a host function nobody defined (named in the message)."""


class OutOfSandboxes(TmeboxError):
    """No window or KeyID is free for another sandbox."""
