/* Native sandbox helper: enter/leave sandbox code, catch its faults and timeouts.
 *
 * The context layout is fixed because the entry/exit assembly addresses it by
 * offset; tmebox_native.c checks every offset with _Static_assert.
 */
#ifndef TMEBOX_NATIVE_H
#define TMEBOX_NATIVE_H

#include <stdint.h>
#include <stddef.h>

/* tmebox.trusted.abi.SYS_TMEBOX_HOST and tmebox.trusted.signature.MAX_IMPORTS
   (test_fast_call checks both): runtime calls SYS_TMEBOX_HOST + k are host functions */
#define SYS_TMEBOX_HOST 0x7200
#define TMEBOX_MAX_IMPORTS 1024
#define TMEBOX_STR_(x) #x
#define TMEBOX_STR(x) TMEBOX_STR_(x)

enum {
    TMEBOX_REASON_RETURN = 1,   /* the called function returned to __tmebox_rt_exit */
    TMEBOX_REASON_SYSCALL = 2,  /* runtime call: number and arguments in gpr[] */
    TMEBOX_REASON_FAULT = 3,    /* signal inside sandbox code: fault_* filled in */
    TMEBOX_REASON_TIMEOUT = 4,  /* the deadline passed */
    TMEBOX_REASON_BADSTACK = 5, /* resume: the return address is not readable sandbox memory */
    TMEBOX_REASON_INTERRUPTED = 6, /* SIGINT arrived while sandbox code ran */
    TMEBOX_REASON_PREEMPTED = 7, /* the service tick stopped a call that held the GIL; its
                                    whole state is in the context: tmebox_continue() goes on */
};

/* tmebox_invoke's result when the sandbox did not simply return (see c->reason) */
#define TMEBOX_INVOKE_STOPPED INT64_MIN

/* gpr[] index = x86 register number */
enum {
    TMEBOX_RAX, TMEBOX_RCX, TMEBOX_RDX, TMEBOX_RBX, TMEBOX_RSP, TMEBOX_RBP, TMEBOX_RSI,
    TMEBOX_RDI, TMEBOX_R8, TMEBOX_R9, TMEBOX_R10, TMEBOX_R11, TMEBOX_R12, TMEBOX_R13,
    TMEBOX_R14, TMEBOX_R15,
};

struct tmebox_direct;

struct tmebox_ctx {
    uint64_t gpr[16];       /* 0x00 sandbox registers */
    uint64_t rip;           /* 0x80 where the next entry starts */
    uint64_t base;          /* 0x88 window base: %gs base and %r14 */
    uint64_t host_rsp;      /* 0x90 */
    uint64_t host_gsbase;   /* 0x98 */
    uint32_t host_mxcsr;    /* 0xa0 */
    uint16_t host_fcw;      /* 0xa4 */
    uint16_t pad0;
    uint32_t mode;          /* 0xa8 0: fresh entry (clear vector state), 1: resume (restore it),
                               2: continue a preempted run, 3: back from a host function
                               (clear vector state, restore the control words) */
    uint32_t reason;        /* 0xac */
    uint64_t fault_signo;   /* 0xb0 */
    uint64_t fault_code;    /* 0xb8 si_code */
    uint64_t fault_addr;    /* 0xc0 si_addr */
    uint64_t fault_rip;     /* 0xc8 */
    uint64_t fault_rsp;     /* 0xd0 */
    uint64_t deadline_ns;   /* 0xd8 CLOCK_MONOTONIC; 0 = no deadline */
    uint32_t running;       /* 0xe0 1 from just before the jump into the window until an exit
                               path or the signal handler takes the thread back */
    uint32_t preemptible;   /* 0xe4 1: the service tick may stop this run (tmebox_fast.c sets it
                               while it runs sandbox code holding the GIL) */
    uint64_t rflags;        /* 0xe8 the flags a preempted run continues with */
    uint32_t interrupt;     /* 0xf0 1: tmebox_interrupt() was called; every run stops at once
                               (TIMEOUT); reset() gives the sandbox a new context */
    uint32_t tid;           /* 0xf4 the thread inside tmebox_run with this context, or 0 */
    struct tmebox_direct *direct; /* 0xf8 the calls tmebox_run services itself (tmebox_calls.c),
                               or NULL */
    uint8_t fxsave[];       /* 0x100 sandbox x87/SSE state across a runtime call (FXSAVE),
                               then at 0x300 the upper halves of %ymm0-15 */
};

int tmebox_init(void);
/* tmebox_calls.c: runtime calls serviced in C on descriptors the host marked */
struct tmebox_fd {
    int32_t host;       /* the host descriptor, or -1: Python services this one */
    uint8_t readable, writable, seekable;
    uint8_t whole;      /* a stream: a write continues until everything is written */
};
struct tmebox_direct {
    uint64_t read_lo, write_lo, hi; /* window offsets the host may read / write */
    uint64_t nfds;
    struct tmebox_fd *fds;
    uint64_t bundle, stack_lo, stack_hi; /* tmebox_resume's arguments, to go on after one */
};
/* 1 and the call's result if tmebox_calls.c services the pending runtime call, else 0 */
int tmebox_direct_call(const struct tmebox_ctx *c, int64_t *result);

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
int tmebox_continue(struct tmebox_ctx *c, uint64_t code_lo, uint64_t code_hi);
void tmebox_release_signals(void);
void tmebox_interrupt(struct tmebox_ctx *c);
void tmebox_write_rt_page(uint8_t *page);
void tmebox_relocate(uint8_t *data, const uint32_t *offsets, size_t n, uint64_t delta);
/* a saved context (CTX_SIZE bytes at saved, any alignment) made another sandbox's: each
   general register and rip in [lo, hi) moved by delta, the window base set to base */
void tmebox_rebase(uint8_t *saved, uint64_t lo, uint64_t hi, uint64_t delta, uint64_t base);
uint64_t tmebox_monotonic_ns(void);
uint64_t tmebox_bench_roundtrip(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp,
                                uint64_t ret_addr, uint64_t iterations);
uint64_t tmebox_bench_alternate(struct tmebox_ctx *a, uint64_t rip_a, uint64_t rsp_a,
                                uint64_t ret_a, struct tmebox_ctx *b, uint64_t rip_b,
                                uint64_t rsp_b, uint64_t ret_b, uint64_t iterations);
uint64_t tmebox_bench_gsbase(uint64_t iterations);
/* tmebox_fast.c: puts SandboxLock, Export and FastCall into the module */
int tmebox_fast_register(void);
void tmebox_nop(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f,
                uint64_t g, uint64_t h, uint64_t i, uint64_t j);

#endif
