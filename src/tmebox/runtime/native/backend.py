"""The native backend: sandbox code runs on the CPU, confined to its 4 GiB window.

Windows are reserved PROT_NONE in big runs (`windows.py`); a sandbox maps its image's shared
code (one sealed memfd per image, `image.py`) and one RW|NORESERVE mapping from the end
of the code to the top guard (`engine.py`; docs/design.md "Window layout").
"""

from __future__ import annotations

import os

from tmebox.errors import TmeboxError
from tmebox.runtime.loader import ImagePlan
from tmebox.runtime.native.engine import NativeEngine, _KeptRuns
from tmebox.runtime.native.helper import lib
from tmebox.runtime.native.image import NativeImage
from tmebox.runtime.native.windows import POOL, RESERVE_CHUNK, check_map_count
from tmebox.runtime.snapshot import Snapshot
from tmebox.trusted.cpu import host_level
from tmebox.trusted.image import CpuLevel

__all__ = ["NativeBackend"]


class NativeBackend:
    name = "native"

    @staticmethod
    def cpu_level() -> CpuLevel:
        return host_level()

    def __init__(self, max_sandboxes: int) -> None:
        # Handlers installed since the module was imported (faulthandler.enable(), ...)
        # would take sandbox faults for the host's: chain to them instead.
        status = lib.tmebox_init()
        if status != 0:
            raise TmeboxError(f"cannot install the sandbox signal handlers: "
                              f"{os.strerror(-status)}")
        check_map_count(max_sandboxes)
        self.max_sandboxes = max_sandboxes
        POOL.ensure(min(max_sandboxes, RESERVE_CHUNK), max_sandboxes)

    def prepare(self, plan: ImagePlan) -> NativeImage:
        return NativeImage(plan)

    def new_engine(self, image: NativeImage, snapshot: Snapshot | None = None) -> NativeEngine:
        ready = snapshot.kept if snapshot is not None else None
        assert ready is None or isinstance(ready, _KeptRuns)
        if ready is not None and ready.ready:
            window, warm = ready.ready.pop(), True
        elif image.warm:
            window, warm, ready = image.warm.pop(), True, None
        else:
            POOL.ensure(1, self.max_sandboxes)
            window, warm, ready = POOL.acquire(), False, None
        try:
            return NativeEngine(image, window, warm, snapshot is None, ready)
        except BaseException:
            POOL.release(window)
            raise

    def release_image(self, image: NativeImage) -> None:
        image.close()

    def close(self) -> None:
        """Nothing process-wide to undo: windows stay reserved for later Runtimes."""
