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

CDEF = """
enum {
    TMEBOX_REASON_RETURN = 1, TMEBOX_REASON_SYSCALL = 2, TMEBOX_REASON_FAULT = 3,
    TMEBOX_REASON_TIMEOUT = 4, TMEBOX_REASON_BADSTACK = 5, TMEBOX_REASON_INTERRUPTED = 6,
};
#define TMEBOX_INVOKE_STOPPED ...
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
    ...;
};
int tmebox_init(void);
struct tmebox_ctx *tmebox_ctx_new(uint64_t base);
void tmebox_ctx_free(struct tmebox_ctx *c);
size_t tmebox_ctx_size(void);
int tmebox_run(struct tmebox_ctx *c);
int tmebox_call(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp, uint64_t ret_addr,
                uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5);
int64_t tmebox_invoke(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp, uint64_t ret_addr,
                      int64_t a0, int64_t a1, int64_t a2, int64_t a3, int64_t a4, int64_t a5);
int tmebox_resume(struct tmebox_ctx *c, int64_t result, int bundle_align,
                  uint64_t stack_lo, uint64_t stack_hi);
void tmebox_write_rt_page(uint8_t *page);
void tmebox_relocate(uint8_t *data, const uint32_t *offsets, size_t n, uint64_t delta);
uint64_t tmebox_monotonic_ns(void);
uint64_t tmebox_bench_roundtrip(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp,
                                uint64_t ret_addr, uint64_t iterations);
uint64_t tmebox_bench_gsbase(uint64_t iterations);
void tmebox_nop(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f,
                uint64_t g, uint64_t h, uint64_t i, uint64_t j);

void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int madvise(void *addr, size_t length, int advice);
int *__errno_location(void);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "tmebox.runtime._native",
    '#include <sys/mman.h>\n#include <errno.h>\n#include "tmebox_native.h"\n',
    sources=[str(_REL / "tmebox_native.c")],
    include_dirs=[str(_REL)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "_build"), verbose=True)
