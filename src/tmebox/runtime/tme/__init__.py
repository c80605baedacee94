"""The `tme` backend: sandboxes on the emulated TME-MK platform (docs/tme-backend.md).

One module per concern: `machine` (the emulated CPU's constants and fast register access),
`mmu` (frames, page tables, write-back through the KeyIDs), `pool` (free space of the
physical pool), `engine` (one sandbox: image, memory, engine) and `backend` (the CPU run
loop, its hooks and watchdog, and the Backend the Runtime drives).
"""

from tmebox.runtime.tme.backend import TmeBackend
from tmebox.runtime.tme.engine import TmeEngine, TmeImage, TmeMemory
from tmebox.runtime.tme.machine import DEFAULT_HEAP_SIZE, DEFAULT_POOL_SIZE

__all__ = ["DEFAULT_HEAP_SIZE", "DEFAULT_POOL_SIZE", "TmeBackend", "TmeEngine", "TmeImage",
           "TmeMemory"]
