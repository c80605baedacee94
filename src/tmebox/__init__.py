"""tmebox: TME-Box in Python — many mutually distrusting sandboxes in one process.

    import tmebox
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load("prog.box"))
        status = sb.run()
"""

from __future__ import annotations

from tmebox.errors import (
    CpuLevelError,
    HostError,
    ImageError,
    IsolationError,
    MissingImport,
    OutOfSandboxes,
    RuntimeClosed,
    SandboxDestroyed,
    SandboxError,
    SandboxExited,
    SandboxFault,
    SandboxInterrupted,
    SandboxTimeout,
    TmeboxError,
    VerificationError,
)

# Not typing.TYPE_CHECKING: typing imports re, and the rewriter must start light.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tmebox.runtime.api import LoadedImage, Runtime, Sandbox
    from tmebox.runtime.backend import FaultKind
    from tmebox.runtime.host import CHostFunction
    from tmebox.trusted.image import Isolation

__version__ = "0.1.0"

__all__ = [
    "CHostFunction",
    "CpuLevel",
    "CpuLevelError",
    "HostError",
    "FaultKind",
    "ImageError",
    "Isolation",
    "IsolationError",
    "MissingImport",
    "LoadedImage",
    "OutOfSandboxes",
    "Runtime",
    "RuntimeClosed",
    "Sandbox",
    "SandboxDestroyed",
    "SandboxError",
    "SandboxExited",
    "SandboxFault",
    "SandboxInterrupted",
    "SandboxTimeout",
    "TmeboxError",
    "VerificationError",
]

# Imported on first use: the runtime pulls in cffi and the native helper, and the rewriter
# (which imports tmebox.errors, so this package) must start without enum, re or dataclasses.
_LAZY = {"CHostFunction": "tmebox.runtime.host", "LoadedImage": "tmebox.runtime.api",
         "Runtime": "tmebox.runtime.api", "Sandbox": "tmebox.runtime.api",
         "FaultKind": "tmebox.runtime.backend", "Isolation": "tmebox.trusted.image",
         "CpuLevel": "tmebox.trusted.image"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tmebox' has no attribute {name!r}")
