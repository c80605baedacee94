"""An image prepared for the native backend: one sealed code memfd, the data template."""

from __future__ import annotations

import fcntl
import os
import weakref

from tmebox.runtime import layout as lay
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.native.helper import ffi, lib
from tmebox.runtime.native.windows import POOL

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NativeImage"]


class NativeImage:
    """An image prepared for the native backend: shared code memfd, data template."""

    def __init__(self, plan: ImagePlan) -> None:
        self.plan = plan
        self.layout = plan.layout()
        code = bytearray(plan.code)
        code += bytes(lay.page_up(len(code)) - len(code))
        page = ffi.from_buffer("uint8_t[]", code)
        lib.tmebox_write_rt_page(page)
        self.code_size = len(code)
        fd = os.memfd_create(f"tmebox-code:{os.path.basename(plan.name)}",
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(code)
            while view:
                view = view[os.write(fd, view):]
            # Sealed: nothing, not even a runtime bug, can change code mapped into windows.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.data = plan.data
        rel = [off - plan.data_start for off in plan.relocs]
        self.relocs = ffi.new("uint32_t[]", rel) if rel else ffi.NULL
        self.n_relocs = len(rel)
        # Windows of destroyed sandboxes that still map this image's code and an
        # emptied RW area: spawning into one skips both mmaps and the code page faults.
        self.warm: list[int] = []
        # Its snapshots' memfds (engine._KeptRuns), whose ready windows close() releases.
        self.kept: weakref.WeakSet[Any] = weakref.WeakSet()

    def close(self) -> None:
        for window in self.warm:
            POOL.release(window)
        self.warm.clear()
        for kept in list(self.kept):
            while kept.ready:
                POOL.release(kept.ready.pop())
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


