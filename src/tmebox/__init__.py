"""tmebox: TME-Box in Python — many mutually distrusting sandboxes in one process."""

from tmebox.errors import (
    ImageError,
    OutOfSandboxes,
    SandboxError,
    SandboxFault,
    SandboxTimeout,
    TmeboxError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "ImageError",
    "OutOfSandboxes",
    "SandboxError",
    "SandboxFault",
    "SandboxTimeout",
    "TmeboxError",
    "VerificationError",
]


def __getattr__(name: str):
    # The runtime pulls in cffi and the native helper; import it only when used.
    if name == "Runtime":
        from tmebox.runtime.api import Runtime

        return Runtime
    raise AttributeError(name)
