"""cffi (API mode) build of the native sandbox helper: `tmebox.runtime._native`.

setup.py names this builder in `cffi_modules`, so `pip install -e .` compiles it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools insists on source paths relative to setup.py's directory (the cwd).
_REL = Path(os.path.relpath(HERE))

CDEF_TEMPLATE = """
enum {
    TMEBOX_REASON_RETURN = 1, TMEBOX_REASON_SYSCALL = 2, TMEBOX_REASON_FAULT = 3,
    TMEBOX_REASON_TIMEOUT = 4, TMEBOX_REASON_BADSTACK = 5, TMEBOX_REASON_INTERRUPTED = 6,
};
#define TMEBOX_INVOKE_STOPPED ...
{prototypes}
struct tmebox_ctx {
    uint64_t gpr[16];
    uint64_t rip;
    uint64_t base;
    uint32_t mode;
    uint32_t reason;
    uint64_t fault_signo;
    uint64_t fault_code;
    uint64_t fault_addr;
    uint64_t fault_rip;
    uint64_t fault_rsp;
    uint64_t deadline_ns;
    uint32_t interrupt;
    struct tmebox_direct *direct;
    ...;
};
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...);
int madvise(void *addr, size_t length, int advice);
int mprotect(void *addr, size_t length, int prot);
int *__errno_location(void);
"""


def _prototypes() -> str:
    """The header's function declarations, so they are written down once."""
    text = (HERE / "tmebox_native.h").read_text()
    start = text.index("int tmebox_init(void);")
    return text[start:text.index("#endif", start)].strip()


CDEF = CDEF_TEMPLATE.replace("{prototypes}", _prototypes())
ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tmebox.runtime._native",
    '#include <sys/mman.h>\n#include <errno.h>\n#include "tmebox_native.h"\n',
    sources=[str(_REL / "tmebox_native.c"), str(_REL / "tmebox_fast.c"),
             str(_REL / "tmebox_calls.c")],
    # tmebox_fast.c is a CPython type with vectorcall: not in the 3.11 limited API.
    py_limited_api=False,
    include_dirs=[str(_REL)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],  # CPython callbacks take what they take
    # Full RELRO: the GOT is read-only once the loader has filled it, so a write
    # primitive in the host cannot redirect the helper's calls (issue 10, finding 1).
    extra_link_args=["-Wl,-z,relro,-z,now"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "_build"), verbose=True)
