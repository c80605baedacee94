/* Native sandbox helper (docs/design.md "Calls into a sandbox", docs/runtime.md).
 *
 * tmebox_run() blocks the host's asynchronous signals, saves the host's
 * callee-saved registers, %gs base, MXCSR and x87 control word, loads the
 * sandbox's registers (%r14 and %gs base forced to the window base) and jumps
 * into the window. Sandbox code leaves only through
 *   - the runtime page stubs, which jump through a host thread-local slot
 *     (`jmp *%fs:slot`) to tmebox_rt_syscall_entry or tmebox_rt_exit_entry, or
 *   - a signal (fault, timer, SIGINT) taken while the context says `running`:
 *     the handler rewrites the interrupted context to resume at tmebox_fault_exit,
 *     wherever the sandbox was (inside its window or not).
 * None of these trusts sandbox memory or registers: each exit path finds the
 * context through the host thread pointer itself, and the host stack pointer
 * comes from it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <cpuid.h>

#include "tmebox_native.h"

_Static_assert(offsetof(struct tmebox_ctx, rip) == 0x80, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, base) == 0x88, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, host_rsp) == 0x90, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, host_gsbase) == 0x98, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, host_mxcsr) == 0xa0, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, host_fcw) == 0xa4, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, mode) == 0xa8, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, reason) == 0xac, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, fault_signo) == 0xb0, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, running) == 0xe0, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, rflags) == 0xe8, "ctx layout");
_Static_assert(offsetof(struct tmebox_ctx, fxsave) == 0x100, "ctx layout");
_Static_assert(TMEBOX_REASON_FAULT == 3 && SIGSEGV == 11, "fault exit constants");

#ifndef HWCAP2_FSGSBASE
#define HWCAP2_FSGSBASE (1 << 1)
#endif

/* Per-thread state the assembly reaches through %fs (initial-exec: a fixed
 * offset from the thread pointer, the same in every thread). The runtime page's
 * stubs jump through `entry`: the page holds the slots' %fs offsets, which are
 * not addresses, instead of the entries' addresses. */
struct tmebox_tls {
    struct tmebox_ctx *cur; /* the context tmebox_run is running, NULL outside it */
    void *entry[2];         /* tmebox_rt_syscall_entry, tmebox_rt_exit_entry */
};
_Static_assert(offsetof(struct tmebox_tls, cur) == 0, "tls layout");
__thread struct tmebox_tls tmebox_tls
    __attribute__((visibility("hidden"), tls_model("initial-exec")));

/* 0: SSE only, 1: AVX (YMM), 2: AVX-512 (ZMM0-31, opmasks), as enabled by the OS. */
uint32_t tmebox_vec_level __attribute__((visibility("hidden")));
const uint32_t tmebox_default_mxcsr __attribute__((visibility("hidden"))) = 0x1f80;
#define FXSAVE_SIZE 512
#define YMM_HI_SIZE 256 /* after the FXSAVE area in the context: upper halves of %ymm0-15 */
#define STATE_SIZE (FXSAVE_SIZE + YMM_HI_SIZE)

extern int tmebox_enter_asm(void) __attribute__((visibility("hidden")));
extern char tmebox_rt_syscall_entry[] __attribute__((visibility("hidden")));
extern char tmebox_rt_exit_entry[] __attribute__((visibility("hidden")));
extern char tmebox_fault_exit[] __attribute__((visibility("hidden")));

/* The entry and exit paths. Every label a sandbox could learn of (they are all
 * in the symbol table) starts by finding the context through %fs itself, so
 * none is a gadget that takes it in a register: a jump to tmebox_enter_asm
 * while running traps, one to an exit entry is just that exit. Only %fs is
 * trusted, which no verified instruction can change (wrfsbase is as much an
 * escape as wrgsbase). */
__asm__(
    /* The context's registers but %rsp, %r14 (the window base) and %r11 (the context). */
    ".macro tmebox_load_gprs\n"
    "    movq 0x00(%r11), %rax\n"
    "    movq 0x08(%r11), %rcx\n"
    "    movq 0x10(%r11), %rdx\n"
    "    movq 0x18(%r11), %rbx\n"
    "    movq 0x28(%r11), %rbp\n"
    "    movq 0x30(%r11), %rsi\n"
    "    movq 0x38(%r11), %rdi\n"
    "    movq 0x40(%r11), %r8\n"
    "    movq 0x48(%r11), %r9\n"
    "    movq 0x50(%r11), %r10\n"
    "    movq 0x60(%r11), %r12\n"
    "    movq 0x68(%r11), %r13\n"
    "    movq 0x78(%r11), %r15\n"
    ".endm\n"

    ".macro tmebox_load_ctx\n"
    "    movq tmebox_tls@gottpoff(%rip), %r11\n"
    "    movq %fs:(%r11), %r11\n"
    ".endm\n"

    /* Back to the host: its stack, %gs base, flags and FPU control words, and
       return from tmebox_enter_asm with the reason. %r11 holds the context. */
    ".macro tmebox_exit\n"
    "    movq 0x90(%r11), %rsp\n"
    "    movq 0x98(%r11), %rax\n"
    "    wrgsbase %rax\n"
    "    cld\n"
    /* AC (bit 18) only popf sets; should a sandbox have set it, misaligned
       host accesses would fault. Tested first: popfq costs ~6 ns. */
    "    pushfq\n"
    "    btrl $18, (%rsp)\n"
    "    jnc 1f\n"
    "    popfq\n"
    "    jmp 2f\n"
    "1:  addq $8, %rsp\n"
    /* the x87 stack empty again (the ABI's state at a return) whatever MMX or
       x87 code the sandbox left, then the host's control words. Exception flags
       are cleared first when any is set: a sandbox may leave an unmasked x87
       exception pending, and emms (a waiting instruction) would raise it here, in
       host code, killing the process. fnclex costs ~12 ns, hence the test. */
    "2:  fnstsw %ax\n"
    "    testb $0x3f, %al\n"
    "    jz 3f\n"
    "    fnclex\n"
    "3:  emms\n"
    "    ldmxcsr 0xa0(%r11)\n"
    "    fldcw 0xa4(%r11)\n"
    "    cmpl $0, tmebox_vec_level(%rip)\n"
    "    je 4f\n"
    "    vzeroupper\n"
    "4:  movl 0xac(%r11), %eax\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".endm\n"

    ".text\n"
    ".p2align 5\n"
    ".globl tmebox_enter_asm\n"
    ".hidden tmebox_enter_asm\n"
    ".type tmebox_enter_asm,@function\n"
    "tmebox_enter_asm:\n"
    "    tmebox_load_ctx\n"
    "    cmpl $0, 0xe0(%r11)\n"
    "    jne 9f\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, 0x90(%r11)\n"
    "    stmxcsr 0xa0(%r11)\n"
    "    fnstcw 0xa4(%r11)\n"
    "    rdgsbase %rax\n"
    "    movq %rax, 0x98(%r11)\n"
    /* Vector state. Fresh entry: everything zero, default MXCSR and x87
       control word. Resume after a runtime call: zero the parts the sandbox
       does not own (upper ZMM halves, ZMM16-31, opmasks), then restore its
       saved x87/SSE state (FXSAVE area) and upper YMM halves. XRSTOR would do
       it in one instruction but costs ~110 ns here; this path costs ~35. */
    "    movl tmebox_vec_level(%rip), %eax\n"
    "    testl %eax, %eax\n"
    "    je 3f\n"
    "    vzeroall\n"
    "    cmpl $2, %eax\n"
    "    jne 4f\n"
    "    vpxord %zmm16, %zmm16, %zmm16\n"
    "    vpxord %zmm17, %zmm17, %zmm17\n"
    "    vpxord %zmm18, %zmm18, %zmm18\n"
    "    vpxord %zmm19, %zmm19, %zmm19\n"
    "    vpxord %zmm20, %zmm20, %zmm20\n"
    "    vpxord %zmm21, %zmm21, %zmm21\n"
    "    vpxord %zmm22, %zmm22, %zmm22\n"
    "    vpxord %zmm23, %zmm23, %zmm23\n"
    "    vpxord %zmm24, %zmm24, %zmm24\n"
    "    vpxord %zmm25, %zmm25, %zmm25\n"
    "    vpxord %zmm26, %zmm26, %zmm26\n"
    "    vpxord %zmm27, %zmm27, %zmm27\n"
    "    vpxord %zmm28, %zmm28, %zmm28\n"
    "    vpxord %zmm29, %zmm29, %zmm29\n"
    "    vpxord %zmm30, %zmm30, %zmm30\n"
    "    vpxord %zmm31, %zmm31, %zmm31\n"
    "    kxorw %k0, %k0, %k0\n"
    "    kxorw %k1, %k1, %k1\n"
    "    kxorw %k2, %k2, %k2\n"
    "    kxorw %k3, %k3, %k3\n"
    "    kxorw %k4, %k4, %k4\n"
    "    kxorw %k5, %k5, %k5\n"
    "    kxorw %k6, %k6, %k6\n"
    "    kxorw %k7, %k7, %k7\n"
    "    jmp 4f\n"
    "3:  pxor %xmm0, %xmm0\n"
    "    pxor %xmm1, %xmm1\n"
    "    pxor %xmm2, %xmm2\n"
    "    pxor %xmm3, %xmm3\n"
    "    pxor %xmm4, %xmm4\n"
    "    pxor %xmm5, %xmm5\n"
    "    pxor %xmm6, %xmm6\n"
    "    pxor %xmm7, %xmm7\n"
    "    pxor %xmm8, %xmm8\n"
    "    pxor %xmm9, %xmm9\n"
    "    pxor %xmm10, %xmm10\n"
    "    pxor %xmm11, %xmm11\n"
    "    pxor %xmm12, %xmm12\n"
    "    pxor %xmm13, %xmm13\n"
    "    pxor %xmm14, %xmm14\n"
    "    pxor %xmm15, %xmm15\n"
    /* x87: fninit is the only cheap way to zero the last-instruction and
       last-operand pointers and opcode (FIP/FDP/FOP: where the previous tenant's
       or the host's last x87 instruction was). A resume needs it too: AMD
       CPUs without XSaveErPtr keep them across fxrstor unless an exception is
       pending (this one's fxsave stores zeros and its fxrstor loads them). */
    "4:  movl 0xa8(%r11), %eax\n"
    "    testl %eax, %eax\n"
    "    je 5f\n"
    "    cmpl $3, %eax\n"
    "    je 5f\n"
    "    fninit\n"
    "    fxrstor64 0x100(%r11)\n"
    "    cmpl $0, tmebox_vec_level(%rip)\n"
    "    je 6f\n"
    "    vinsertf128 $1, 0x300(%r11), %ymm0, %ymm0\n"
    "    vinsertf128 $1, 0x310(%r11), %ymm1, %ymm1\n"
    "    vinsertf128 $1, 0x320(%r11), %ymm2, %ymm2\n"
    "    vinsertf128 $1, 0x330(%r11), %ymm3, %ymm3\n"
    "    vinsertf128 $1, 0x340(%r11), %ymm4, %ymm4\n"
    "    vinsertf128 $1, 0x350(%r11), %ymm5, %ymm5\n"
    "    vinsertf128 $1, 0x360(%r11), %ymm6, %ymm6\n"
    "    vinsertf128 $1, 0x370(%r11), %ymm7, %ymm7\n"
    "    vinsertf128 $1, 0x380(%r11), %ymm8, %ymm8\n"
    "    vinsertf128 $1, 0x390(%r11), %ymm9, %ymm9\n"
    "    vinsertf128 $1, 0x3a0(%r11), %ymm10, %ymm10\n"
    "    vinsertf128 $1, 0x3b0(%r11), %ymm11, %ymm11\n"
    "    vinsertf128 $1, 0x3c0(%r11), %ymm12, %ymm12\n"
    "    vinsertf128 $1, 0x3d0(%r11), %ymm13, %ymm13\n"
    "    vinsertf128 $1, 0x3e0(%r11), %ymm14, %ymm14\n"
    "    vinsertf128 $1, 0x3f0(%r11), %ymm15, %ymm15\n"
    "    jmp 6f\n"
    /* fninit empties the tags but keeps the data registers: overwrite them
       through their MMX aliases first */
    "5:  pxor %mm0, %mm0\n"
    "    pxor %mm1, %mm1\n"
    "    pxor %mm2, %mm2\n"
    "    pxor %mm3, %mm3\n"
    "    pxor %mm4, %mm4\n"
    "    pxor %mm5, %mm5\n"
    "    pxor %mm6, %mm6\n"
    "    pxor %mm7, %mm7\n"
    "    fninit\n"
    "    testl %eax, %eax\n"
    "    jne 8f\n"
    "    ldmxcsr tmebox_default_mxcsr(%rip)\n"
    "    jmp 6f\n"
    /* Mode 3, back from a host function: the vector registers are the ABI's
       caller-saved ones, cleared like a fresh entry's; the control words are
       callee-saved, so the sandbox's own come back (stored by the entry below
       with fnstcw/stmxcsr: valid values, whatever the sandbox did). */
    "8:  fldcw 0x100(%r11)\n"
    "    ldmxcsr 0x118(%r11)\n"
    "6:\n"
    "    movq 0x88(%r11), %rax\n"
    "    wrgsbase %rax\n"
    "    movq %rax, %r14\n"
    /* From here on any fault, whatever %rip, ends the sandbox's call. */
    "    movl $1, 0xe0(%r11)\n"
    "    cmpl $2, 0xa8(%r11)\n"
    "    je 7f\n"
    /* deterministic flags (ZF PF set, the rest clear) and DF=0 */
    "    xorl %eax, %eax\n"
    "    cld\n"
    "    movq 0x20(%r11), %rsp\n"
    "    tmebox_load_gprs\n"
    "    movq 0x80(%r11), %r11\n"
    "    jmp *%r11\n"
    /* Continue a preempted run exactly where it stopped: every register as it was,
       %r11 included, so the jump goes through an iretq frame on the host stack
       (below host_rsp, which the exit paths go back to). tmebox_continue checked
       %rip and cleaned the flags. */
    "7:  movq %ss, %rax\n"
    "    pushq %rax\n"
    "    pushq 0x20(%r11)\n"
    "    pushq 0xe8(%r11)\n"
    "    movq %cs, %rax\n"
    "    pushq %rax\n"
    "    pushq 0x80(%r11)\n"
    "    tmebox_load_gprs\n"
    "    movq 0x58(%r11), %r11\n"
    "    iretq\n"
    /* running already: sandbox code jumped here; trap, so that it is its fault */
    "9:  ud2\n"
    ".size tmebox_enter_asm, .-tmebox_enter_asm\n"

    /* Reached from the runtime page stub at image offset 0, on the sandbox
       stack with the sandbox's return address at (%rsp). %rcx and %r11 are
       free (the syscall convention clobbers them). */
    ".p2align 5\n"
    ".globl tmebox_rt_syscall_entry\n"
    ".hidden tmebox_rt_syscall_entry\n"
    "tmebox_rt_syscall_entry:\n"
    "    tmebox_load_ctx\n"
    "    movl $0, 0xe0(%r11)\n"
    "    movq %rax, 0x00(%r11)\n"
    "    movq %rdx, 0x10(%r11)\n"
    "    movq %rbx, 0x18(%r11)\n"
    "    movq %rsp, 0x20(%r11)\n"
    "    movq %rbp, 0x28(%r11)\n"
    "    movq %rsi, 0x30(%r11)\n"
    "    movq %rdi, 0x38(%r11)\n"
    "    movq %r8, 0x40(%r11)\n"
    "    movq %r9, 0x48(%r11)\n"
    "    movq %r10, 0x50(%r11)\n"
    "    movq %r12, 0x60(%r11)\n"
    "    movq %r13, 0x68(%r11)\n"
    "    movq %r15, 0x78(%r11)\n"
    /* A host function (SYS_TMEBOX_HOST + k, k < MAX_IMPORTS) is a C call for the
       sandbox: its vector registers are the caller's to lose, so only the control
       words are kept (mode 3; FXSAVE+FXRSTOR cost ~80 ns of a ~250 ns host call).
       Any other runtime call keeps the whole x87/SSE state (mode 1). */
    "    movq %rax, %rcx\n"
    "    subq $" TMEBOX_STR(SYS_TMEBOX_HOST) ", %rcx\n"
    "    cmpq $" TMEBOX_STR(TMEBOX_MAX_IMPORTS) ", %rcx\n"
    "    jae 1f\n"
    "    fnstcw 0x100(%r11)\n"
    "    stmxcsr 0x118(%r11)\n"
    "    movl $3, 0xa8(%r11)\n"
    "    jmp 2f\n"
    "1:  fxsave64 0x100(%r11)\n"
    /* x86-64-v3 code owns the upper halves of %ymm0-15 too, and the syscall
       convention keeps them; FXSAVE does not store them. */
    "    cmpl $0, tmebox_vec_level(%rip)\n"
    "    je 3f\n"
    "    vextractf128 $1, %ymm0, 0x300(%r11)\n"
    "    vextractf128 $1, %ymm1, 0x310(%r11)\n"
    "    vextractf128 $1, %ymm2, 0x320(%r11)\n"
    "    vextractf128 $1, %ymm3, 0x330(%r11)\n"
    "    vextractf128 $1, %ymm4, 0x340(%r11)\n"
    "    vextractf128 $1, %ymm5, 0x350(%r11)\n"
    "    vextractf128 $1, %ymm6, 0x360(%r11)\n"
    "    vextractf128 $1, %ymm7, 0x370(%r11)\n"
    "    vextractf128 $1, %ymm8, 0x380(%r11)\n"
    "    vextractf128 $1, %ymm9, 0x390(%r11)\n"
    "    vextractf128 $1, %ymm10, 0x3a0(%r11)\n"
    "    vextractf128 $1, %ymm11, 0x3b0(%r11)\n"
    "    vextractf128 $1, %ymm12, 0x3c0(%r11)\n"
    "    vextractf128 $1, %ymm13, 0x3d0(%r11)\n"
    "    vextractf128 $1, %ymm14, 0x3e0(%r11)\n"
    "    vextractf128 $1, %ymm15, 0x3f0(%r11)\n"
    "3:  movl $1, 0xa8(%r11)\n"
    "2:  movl $2, 0xac(%r11)\n"
    "    tmebox_exit\n"

    /* Reached from the stub at image offset 0x20: a host-initiated call returned. */
    ".p2align 5\n"
    ".globl tmebox_rt_exit_entry\n"
    ".hidden tmebox_rt_exit_entry\n"
    "tmebox_rt_exit_entry:\n"
    "    tmebox_load_ctx\n"
    "    movl $0, 0xe0(%r11)\n"
    "    movq %rax, 0x00(%r11)\n"
    "    movq %rsp, 0x20(%r11)\n"
    "    movl $1, 0xac(%r11)\n"
    "    tmebox_exit\n"

    /* The signal handler resumes here once it has cleared `running` and filled
       in reason and fault_*. Still running: sandbox code jumped here itself. */
    ".p2align 5\n"
    ".globl tmebox_fault_exit\n"
    ".hidden tmebox_fault_exit\n"
    "tmebox_fault_exit:\n"
    "    tmebox_load_ctx\n"
    "    cmpl $0, 0xe0(%r11)\n"
    "    je 5f\n"
    "    movl $0, 0xe0(%r11)\n"
    "    movl $3, 0xac(%r11)\n"
    "    movq $11, 0xb0(%r11)\n"
    "    leaq tmebox_fault_exit(%rip), %rax\n"
    "    movq %rax, 0xc0(%r11)\n"
    "    movq %rax, 0xc8(%r11)\n"
    "    movq %rsp, 0xd0(%r11)\n"
    "5:  tmebox_exit\n");

static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
#define N_FAULT_SIGNALS (sizeof fault_signals / sizeof fault_signals[0])
static struct sigaction old_actions[N_FAULT_SIGNALS];
static struct sigaction old_sigint;
static int timer_signal;
/* Kernel sigset (bit n-1 = signal n) of the signals blocked while sandbox code runs. */
static uint64_t async_signals;

/* Per-thread resources, released by the pthread key destructor.
 *
 * The signal mask is set lazily: the first entry blocks the host's asynchronous
 * signals, and they stay blocked across further entries and exits until the
 * service tick (a one-shot timer armed at most once per SERVICE_NS) finds the
 * thread outside tmebox_run and unblocks them on its way out of the handler (by
 * editing the mask sigreturn restores). A host signal so waits at most ~SERVICE_NS
 * after the last call, and a call costs no system call (docs/runtime.md, "Signals"). */
struct thread_state {
    void *altstack;
    size_t altstack_size;
    int timer_ok;
    timer_t timer;           /* deadlines */
    int service_ok;
    timer_t service;         /* the service tick */
    volatile sig_atomic_t service_armed;
    volatile sig_atomic_t masked; /* the async signals are blocked on this thread */
    volatile sig_atomic_t timer_armed; /* the deadline timer may fire: disarm on exit */
    uint32_t tid;
    uint64_t added;          /* the signals tmebox blocked that the host had not */
};
static __thread struct thread_state *tls_state
    __attribute__((tls_model("initial-exec")));
static pthread_key_t state_key;

#define ALTSTACK_SIZE (64 * 1024)
#define TIMER_RETRY_NS 100000
#define SERVICE_NS 1000000
/* sigev_value of the two per-thread timers */
enum { TIMER_DEADLINE = 0, TIMER_SERVICE = 1, TIMER_INTERRUPT = 2 };

static void arm_abs(timer_t timer, uint64_t when_ns)
{
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(when_ns / 1000000000ull);
    its.it_value.tv_nsec = (long)(when_ns % 1000000000ull);
    timer_settime(timer, TIMER_ABSTIME, &its, NULL);
}

/* rt_sigprocmask directly: glibc's wrappers refuse to block its own SIGCANCEL
   and SIGSETXID, whose handlers would write their frames on the sandbox stack too. */
static void set_sigmask(int how, const uint64_t *set, uint64_t *old)
{
    syscall(SYS_rt_sigprocmask, how, set, old, sizeof *set);
}

static void chain(int idx, int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = &old_actions[idx];
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) {
            old->sa_sigaction(sig, si, uc);
            return;
        }
    } else if (old->sa_handler == SIG_IGN) {
        return;
    } else if (old->sa_handler != SIG_DFL) {
        old->sa_handler(sig);
        return;
    }
    /* Default action: reinstall it and let the faulting instruction run again. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

/* End the sandbox's call: the interrupted context resumes at tmebox_fault_exit. */
static void stop_sandbox(struct tmebox_ctx *c, greg_t *g, uint32_t reason, int sig,
                         const siginfo_t *si)
{
    c->fault_signo = (uint64_t)sig;
    c->fault_code = (uint64_t)(int64_t)si->si_code;
    c->fault_addr = (uint64_t)si->si_addr;
    c->fault_rip = (uint64_t)g[REG_RIP];
    c->fault_rsp = (uint64_t)g[REG_RSP];
    c->reason = reason;
    c->running = 0;
    g[REG_RIP] = (greg_t)tmebox_fault_exit;
    /* The verifier admits no popf, but should TF, AC or DF ever be set they
       must not follow us into host code. */
    g[REG_EFL] &= ~(greg_t)(0x100 | 0x40000 | 0x400);
}

/* The x87/SSE state and the upper halves of %ymm0-15 from a signal frame. The
 * kernel writes the frame in the standard XSAVE format: the FXSAVE area, its
 * software-reserved bytes telling whether the extended header follows, the header
 * at 512 and the AVX component at 576 (CPUID leaf 0xd, subleaf 2). A component the
 * header marks as in its initial state was not written and is zero. */
static void save_signal_frame_vectors(struct tmebox_ctx *c, const uint8_t *frame)
{
    uint32_t magic, size;
    uint64_t features, present;
    memcpy(c->fxsave, frame, FXSAVE_SIZE);
    memset(c->fxsave + FXSAVE_SIZE, 0, YMM_HI_SIZE);
    memcpy(&magic, frame + 464, 4);
    memcpy(&size, frame + 464 + 16, 4);
    memcpy(&features, frame + 464 + 8, 8);
    if (magic != 0x46505853u || !(features & 4) || size < 576 + YMM_HI_SIZE)
        return;
    memcpy(&present, frame + 512, 8);
    if (present & 4)
        memcpy(c->fxsave + FXSAVE_SIZE, frame + 576, YMM_HI_SIZE);
}

/* The service tick stopped a run that holds the GIL: keep its whole state (the
 * handler's frame has it) so that tmebox_continue() can go on as if nothing happened. */
static void preempt_sandbox(struct tmebox_ctx *c, ucontext_t *uc, const siginfo_t *si)
{
    greg_t *g = uc->uc_mcontext.gregs;
    static const int from[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP,
                                 REG_RSI, REG_RDI, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                 REG_R12, REG_R13, REG_R14, REG_R15};
    for (int i = 0; i < 16; i++)
        c->gpr[i] = (uint64_t)g[from[i]];
    c->rip = (uint64_t)g[REG_RIP];
    c->rflags = (uint64_t)g[REG_EFL];
    if (uc->uc_mcontext.fpregs)
        save_signal_frame_vectors(c, (const uint8_t *)uc->uc_mcontext.fpregs);
    stop_sandbox(c, g, TMEBOX_REASON_PREEMPTED, timer_signal, si);
}

/* On the way out of the handler, the host's own signal mask again. */
static void unmask_on_return(struct thread_state *t, ucontext_t *uc)
{
    uint64_t m;
    memcpy(&m, &uc->uc_sigmask, sizeof m);
    m &= ~t->added;
    memcpy(&uc->uc_sigmask, &m, sizeof m);
    t->masked = 0;
}

static void on_signal(int sig, siginfo_t *si, void *uc_)
{
    /* The kernel clears DF and TF for a handler, not AC: a sandbox that set it
       must not make this handler, or those it chains to, fault on alignment. */
    __asm__ volatile("pushfq\n\tandl $~0x40000, (%%rsp)\n\tpopfq" ::: "cc", "memory");
    ucontext_t *uc = uc_;
    greg_t *g = uc->uc_mcontext.gregs;
    struct tmebox_ctx *c = tmebox_tls.cur;
    /* Sandbox code, wherever %rip is: in the window, or anywhere it jumped to. */
    int sandbox = c && c->running;

    if (sig == SIGINT) {
        /* Ctrl-C: Python's own handler records it (KeyboardInterrupt is raised
           when the call returns); sandbox code is left at once. */
        if (sandbox)
            stop_sandbox(c, g, TMEBOX_REASON_INTERRUPTED, sig, si);
        if (old_sigint.sa_flags & SA_SIGINFO) {
            if (old_sigint.sa_sigaction)
                old_sigint.sa_sigaction(sig, si, uc_);
        } else if (old_sigint.sa_handler != SIG_IGN && old_sigint.sa_handler != SIG_DFL) {
            old_sigint.sa_handler(sig);
        } else if (old_sigint.sa_handler == SIG_DFL) {
            sigaction(SIGINT, &old_sigint, NULL);
            raise(SIGINT);
        }
        return;
    }
    if (sig == timer_signal && si->si_code == SI_TIMER
        && si->si_value.sival_int == TIMER_SERVICE) {
        struct thread_state *t = tls_state;
        if (!t)
            return;
        t->service_armed = 0;
        if (!c) {
            if (t->masked)
                unmask_on_return(t, uc);
        } else if (sandbox && c->preemptible
                   && ((uint64_t)g[REG_RIP] >> 32) == (c->base >> 32)) {
            /* in its window: not on the helper's own way in or out */
            preempt_sandbox(c, uc, si);
        }
        /* inside tmebox_run otherwise: its exit arms the tick again */
        return;
    }
    if (sig == timer_signal) {
        /* The deadline timer, its retry, or tmebox_interrupt()'s signal: each stops the
           current context only if it is due, so that a late one meant for a context this
           thread ran before is dropped. */
        int due = c && (c->interrupt
                        || (c->deadline_ns && tmebox_monotonic_ns() >= c->deadline_ns));
        if (sandbox && due) {
            stop_sandbox(c, g, TMEBOX_REASON_TIMEOUT, sig, si);
            return;
        }
        /* Between tmebox_run's checks and the jump into the window (or on the way
           out): try again shortly. Outside tmebox_run a late tick is simply dropped. */
        if (due && tls_state && tls_state->timer_ok) {
            tls_state->timer_armed = 1;
            arm_abs(tls_state->timer, tmebox_monotonic_ns() + TIMER_RETRY_NS);
        }
        return;
    }
    /* A fault the CPU raised (si_code > 0) on this thread while it ran sandbox
       code is the sandbox's; one another process sent is the host's. */
    if (sandbox && si->si_code > 0) {
        stop_sandbox(c, g, TMEBOX_REASON_FAULT, sig, si);
        return;
    }
    for (size_t i = 0; i < N_FAULT_SIGNALS; i++)
        if (fault_signals[i] == sig) {
            chain((int)i, sig, si, uc_);
            return;
        }
}

static int thread_timer(timer_t *timer, int kind)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = timer_signal;
    sev.sigev_value.sival_int = kind;
    sev._sigev_un._tid = gettid();
    return timer_create(CLOCK_MONOTONIC, &sev, timer);
}

static void free_thread_state(void *p)
{
    struct thread_state *t = p;
    stack_t ss;
    if (t->altstack) {
        if (sigaltstack(NULL, &ss) == 0 && ss.ss_sp == t->altstack) {
            memset(&ss, 0, sizeof ss);
            ss.ss_flags = SS_DISABLE;
            sigaltstack(&ss, NULL);
        }
        munmap(t->altstack, t->altstack_size);
    }
    if (t->timer_ok)
        timer_delete(t->timer);
    if (t->service_ok)
        timer_delete(t->service);
    free(t);
}

static struct thread_state *thread_state(void)
{
    struct thread_state *t = tls_state;
    if (t)
        return t;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    /* A fault on the sandbox stack must not be delivered on it. */
    stack_t old;
    if (sigaltstack(NULL, &old) == 0 && (old.ss_flags & SS_DISABLE)) {
        void *mem = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            free(t);
            return NULL;
        }
        stack_t ss = {.ss_sp = mem, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
        if (sigaltstack(&ss, NULL) != 0) {
            munmap(mem, ALTSTACK_SIZE);
            free(t);
            return NULL;
        }
        t->altstack = mem;
        t->altstack_size = ALTSTACK_SIZE;
    }
    /* Without the tick (no timer left: RLIMIT_SIGPENDING) every exit unblocks the
       signals itself, two system calls per entry. */
    t->service_ok = thread_timer(&t->service, TIMER_SERVICE) == 0;
    t->tid = (uint32_t)gettid();
    pthread_setspecific(state_key, t);
    tls_state = t;
    tmebox_tls.entry[0] = tmebox_rt_syscall_entry;
    tmebox_tls.entry[1] = tmebox_rt_exit_entry;
    return t;
}

static int ensure_timer(struct thread_state *t)
{
    if (t->timer_ok)
        return 0;
    if (thread_timer(&t->timer, TIMER_DEADLINE) != 0)
        return -1;
    t->timer_ok = 1;
    return 0;
}

static int init_error;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction our_action = {
    .sa_sigaction = on_signal,
    .sa_flags = SA_SIGINFO | SA_ONSTACK,
};

static int is_ours(const struct sigaction *a)
{
    return (a->sa_flags & SA_SIGINFO) && a->sa_sigaction == on_signal;
}

/* (Re)install the fault handlers, chaining to whatever is there now that is not
 * ours: someone (faulthandler.enable(), a library) may have replaced them since. */
static int install_handlers(void)
{
    int err = 0;
    struct sigaction cur;
    pthread_mutex_lock(&install_lock);
    for (size_t i = 0; i < N_FAULT_SIGNALS; i++) {
        if (sigaction(fault_signals[i], NULL, &cur) != 0) {
            err = -errno;
            break;
        }
        if (is_ours(&cur))
            continue;
        old_actions[i] = cur;
        if (sigaction(fault_signals[i], &our_action, NULL) != 0) {
            err = -errno;
            break;
        }
    }
    /* Only take over SIGINT from a handler we can chain to (Python's). */
    if (!err && sigaction(SIGINT, NULL, &cur) == 0 && !is_ours(&cur)
        && cur.sa_handler != SIG_IGN) {
        old_sigint = cur;
        sigaction(SIGINT, &our_action, NULL);
    }
    pthread_mutex_unlock(&install_lock);
    return err;
}

/* A child forked while the signals were lazily blocked: give it the host's mask (it would
 * keep them blocked forever, and pass that on to what it executes); its timers are gone. */
static void after_fork_child(void)
{
    struct thread_state *t = tls_state;
    if (!t)
        return;
    if (t->masked) {
        uint64_t added = t->added;
        set_sigmask(SIG_UNBLOCK, &added, NULL);
        t->masked = 0;
    }
    /* the child's calls unblock on every exit (no tick: timers are not inherited) */
    t->timer_ok = t->service_ok = 0;
    t->service_armed = t->timer_armed = 0;
    t->tid = (uint32_t)gettid();
}

static void do_init(void)
{
    unsigned a, b, cx, d;
    if (!(getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE)) {
        init_error = -ENOSYS;
        return;
    }
    tmebox_vec_level = 0;
    if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & bit_OSXSAVE)) {
        uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
        __cpuid_count(7, 0, a, b, cx, d);
        if ((xcr0 & 0xe6) == 0xe6 && (b & bit_AVX512F))
            tmebox_vec_level = 2;
        else if ((xcr0 & 6) == 6)
            tmebox_vec_level = 1;
    }

    timer_signal = SIGRTMIN + 4;
    if (pthread_key_create(&state_key, free_thread_state) != 0) {
        init_error = -EAGAIN;
        return;
    }
    async_signals = ~0ull;
    for (size_t i = 0; i < N_FAULT_SIGNALS; i++)
        async_signals &= ~(1ull << (fault_signals[i] - 1));
    async_signals &= ~(1ull << (timer_signal - 1) | 1ull << (SIGINT - 1));
    sigfillset(&our_action.sa_mask);
    if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
        init_error = -ENOMEM;
        return;
    }
    if (sigaction(timer_signal, &our_action, NULL) != 0) {
        init_error = -errno;
        return;
    }
    init_error = install_handlers();
}

int tmebox_init(void)
{
    pthread_once(&init_once, do_init);
    if (init_error)
        return init_error;
    return install_handlers();
}

struct tmebox_ctx *tmebox_ctx_new(uint64_t base)
{
    size_t size = sizeof(struct tmebox_ctx) + STATE_SIZE;
    struct tmebox_ctx *c = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (!c)
        return NULL;
    memset(c, 0, size);
    c->base = base;
    return c;
}

void tmebox_ctx_free(struct tmebox_ctx *c)
{
    free(c);
}

size_t tmebox_ctx_size(void)
{
    return sizeof(struct tmebox_ctx) + STATE_SIZE;
}

uint64_t tmebox_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void arm_service(struct thread_state *t)
{
    if (t->service_ok && !t->service_armed) {
        t->service_armed = 1;
        arm_abs(t->service, tmebox_monotonic_ns() + SERVICE_NS);
    }
}

static int run_once(struct tmebox_ctx *c);
static int prepare_resume(struct tmebox_ctx *c, int64_t result, int bundle_align,
                          uint64_t stack_lo, uint64_t stack_hi);

int tmebox_run(struct tmebox_ctx *c)
{
    /* The runtime calls tmebox_calls.c services (plain I/O on host descriptors, clocks)
       go on here, without a way back to Python; the rest end the run. */
    for (;;) {
        int reason = run_once(c);
        int64_t result;
        if (reason != TMEBOX_REASON_SYSCALL || !tmebox_direct_call(c, &result))
            return reason;
        const struct tmebox_direct *d = c->direct;
        reason = prepare_resume(c, result, (int)d->bundle, d->stack_lo, d->stack_hi);
        if (reason)
            return reason;
    }
}

static int run_once(struct tmebox_ctx *c)
{
    struct thread_state *t = tls_state;
    if (!t && !(t = thread_state()))
        return -ENOMEM;
    /* Current from here on: a timer tick that comes before the jump into the window
       is retried (deadline) or leaves the mask alone (service). */
    uint64_t deadline = c->deadline_ns;
    /* The timer serves deadlines and interrupt()'s retries. Without one (timer_create
       fails when the user's queued-signal limit is spent) a run with a deadline cannot
       start; one without still can, an interrupt then reaching it only while it runs. */
    if (ensure_timer(t) != 0 && deadline)
        return -errno;
    tmebox_tls.cur = c;
    /* tid, then interrupt (a full barrier between): tmebox_interrupt() stores them the
       other way round, so either this sees its flag or it sees our tid and signals. */
    __atomic_store_n(&c->tid, t->tid, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->interrupt, __ATOMIC_SEQ_CST)
        || (deadline && tmebox_monotonic_ns() >= deadline)) {
        c->tid = 0;
        tmebox_tls.cur = NULL;
        c->reason = TMEBOX_REASON_TIMEOUT;
        c->fault_rip = c->rip;
        return TMEBOX_REASON_TIMEOUT;
    }
    if (deadline) {
        t->timer_armed = 1;
        arm_abs(t->timer, deadline);
    }
    /* No host handler may run on the sandbox's stack, nor with its %gs base and
       FPU modes: every signal but the faults, the timers and SIGINT (all
       handled on the alternate stack) waits until the sandbox has left. */
    if (!t->masked) {
        uint64_t host_mask;
        set_sigmask(SIG_BLOCK, &async_signals, &host_mask);
        t->added = async_signals & ~host_mask;
        t->masked = 1;
    }
    arm_service(t);
    int reason = tmebox_enter_asm();
    __atomic_store_n(&c->tid, 0, __ATOMIC_SEQ_CST);
    tmebox_tls.cur = NULL;
    if (t->service_ok)
        arm_service(t); /* again, if a tick came while the sandbox ran: it must find us out */
    else
        tmebox_release_signals();
    if (t->timer_armed) {
        struct itimerspec off = {0};
        t->timer_armed = 0;
        timer_settime(t->timer, 0, &off, NULL);
    }
    return reason;
}

void tmebox_interrupt(struct tmebox_ctx *c)
{
    /* From any thread. The flag stops every later run at its start; a run under way is
       stopped by a signal to its thread, which the handler checks against the flag. */
    /* Only the first call signals: the flag stays set, and one queued signal per
       interrupt() would let a caller in a loop spend the user's signal queue (and the
       target thread's time) on them. */
    if (__atomic_exchange_n(&c->interrupt, 1, __ATOMIC_SEQ_CST))
        return;
    uint32_t tid = __atomic_load_n(&c->tid, __ATOMIC_SEQ_CST);
    if (tid) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        si.si_signo = timer_signal;
        si.si_code = SI_QUEUE;
        si.si_pid = getpid();
        si.si_uid = getuid();
        si.si_value.sival_int = TIMER_INTERRUPT;
        syscall(SYS_rt_tgsigqueueinfo, getpid(), tid, timer_signal, &si);
    }
}

void tmebox_release_signals(void)
{
    /* The host's mask now, instead of at the next service tick (before the host
       hands its signal mask to something that outlives the tick: a child process). */
    struct thread_state *t = tls_state;
    if (t && t->masked && !tmebox_tls.cur) {
        uint64_t added = t->added;
        t->masked = 0;
        set_sigmask(SIG_UNBLOCK, &added, NULL);
    }
}

int tmebox_continue(struct tmebox_ctx *c, uint64_t code_lo, uint64_t code_hi)
{
    /* Only after a preemption, and only to where it stopped inside the window's code;
       no trap flag, no alignment checks: the flags a verified sandbox can have. */
    if (c->reason != TMEBOX_REASON_PREEMPTED || c->rip < c->base + code_lo
        || c->rip >= c->base + code_hi) {
        c->reason = TMEBOX_REASON_FAULT;
        c->fault_signo = SIGSEGV;
        c->fault_addr = c->fault_rip = c->rip;
        c->fault_rsp = c->gpr[TMEBOX_RSP];
        return TMEBOX_REASON_FAULT;
    }
    c->rflags = (c->rflags & 0xcd5) | 0x202;
    c->gpr[TMEBOX_R14] = c->base;
    c->mode = 2;
    return tmebox_run(c);
}

static const uint8_t call_r10[3] = {0x41, 0xff, 0xd2}; /* call *%r10 */

int tmebox_call(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp, uint64_t ret_addr,
                uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5)
{
    /* rsp is a 16-aligned address the caller checked to lie in the sandbox's stack;
       ret_addr is the runtime page's exit entry. The sandbox is entered through the
       `call *%r10` just before that entry, which pushes ret_addr: the CPU's return
       predictor then expects the function's `ret` to land there, as it does. */
    memset(c->gpr, 0, sizeof c->gpr);
    c->gpr[TMEBOX_RDI] = a0;
    c->gpr[TMEBOX_RSI] = a1;
    c->gpr[TMEBOX_RDX] = a2;
    c->gpr[TMEBOX_RCX] = a3;
    c->gpr[TMEBOX_R8] = a4;
    c->gpr[TMEBOX_R9] = a5;
    c->gpr[TMEBOX_R10] = rip;
    c->gpr[TMEBOX_RSP] = c->base + (uint32_t)rsp;
    c->rip = ret_addr - sizeof call_r10;
    c->mode = 0;
    return tmebox_run(c);
}

int64_t tmebox_invoke(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp, uint64_t ret_addr,
                      int64_t a0, int64_t a1, int64_t a2, int64_t a3, int64_t a4, int64_t a5)
{
    /* One foreign call per sb.call() on the fast path: %rax comes back as the
       result, and only the sentinel value makes the caller look at c->reason. */
    int reason = tmebox_call(c, rip, rsp, ret_addr, (uint64_t)a0, (uint64_t)a1, (uint64_t)a2,
                             (uint64_t)a3, (uint64_t)a4, (uint64_t)a5);
    if (reason != TMEBOX_REASON_RETURN) {
        c->reason = (uint32_t)reason;
        return TMEBOX_INVOKE_STOPPED;
    }
    c->reason = TMEBOX_REASON_RETURN;
    return (int64_t)c->gpr[TMEBOX_RAX];
}

int tmebox_resume(struct tmebox_ctx *c, int64_t result, int bundle_align,
                  uint64_t stack_lo, uint64_t stack_hi)
{
    int reason = prepare_resume(c, result, bundle_align, stack_lo, stack_hi);
    return reason ? reason : tmebox_run(c);
}

/* Finish the pending runtime call with result: 0 (ready to run), or BADSTACK. */
static int prepare_resume(struct tmebox_ctx *c, int64_t result, int bundle_align,
                          uint64_t stack_lo, uint64_t stack_hi)
{
    /* The return address lies in sandbox memory: only read it where the
       sandbox's RW mapping is, and only ever resume inside the window. */
    uint32_t sp = (uint32_t)c->gpr[TMEBOX_RSP];
    if (sp < stack_lo || (uint64_t)sp + 8 > stack_hi) {
        c->fault_signo = SIGSEGV;
        c->fault_addr = c->base + sp;
        c->fault_rip = c->rip;
        c->fault_rsp = c->gpr[TMEBOX_RSP];
        c->reason = TMEBOX_REASON_BADSTACK;
        return TMEBOX_REASON_BADSTACK;
    }
    uint64_t ret = *(volatile uint64_t *)(c->base + sp);
    uint32_t off = (uint32_t)ret;
    if (bundle_align)
        off &= ~31u;
    c->gpr[TMEBOX_RSP] = c->base + (uint32_t)(sp + 8);
    c->gpr[TMEBOX_RAX] = (uint64_t)result;
    c->gpr[TMEBOX_RCX] = 0;
    c->gpr[TMEBOX_R11] = 0;
    c->rip = c->base + off;
    /* how the runtime-call entry saved the vector state: all of it (1), or only the
       control words, for a host function (3) */
    c->mode = c->mode == 3 ? 3 : 1;
    return 0;
}

/* The %fs offset of a thread-local: not an address (the same in every thread). */
static int32_t tls_offset(void *slot)
{
    intptr_t tp;
    __asm__("movq %%fs:0, %0" : "=r"(tp));
    return (int32_t)((intptr_t)slot - tp);
}

void tmebox_write_rt_page(uint8_t *page)
{
    /* int3 everywhere; at 0x000 and 0x020 `jmp *%fs:slot` through the thread's
       tmebox_tls.entry, so that the page holds no host address; right before
       0x020 the `call *%r10` host-initiated calls enter through (tmebox_call). A
       sandbox cannot reach it: direct branches may only target the two entries,
       masked ones only bundle starts. */
    static const uint8_t jmp_fs[4] = {0x64, 0xff, 0x24, 0x25}; /* jmp *%fs:disp32 */
    memset(page, 0xcc, 4096);
    for (int i = 0; i < 2; i++) {
        int32_t disp = tls_offset(&tmebox_tls.entry[i]);
        memcpy(page + 0x20 * i, jmp_fs, sizeof jmp_fs);
        memcpy(page + 0x20 * i + sizeof jmp_fs, &disp, sizeof disp);
    }
    memcpy(page + 0x20 - sizeof call_r10, call_r10, sizeof call_r10);
}

void tmebox_relocate(uint8_t *data, const uint32_t *offsets, size_t n, uint64_t delta)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, data + offsets[i], 8);
        v += delta;
        memcpy(data + offsets[i], &v, 8);
    }
}

void tmebox_rebase(uint8_t *saved, uint64_t lo, uint64_t hi, uint64_t delta, uint64_t base)
{
    for (size_t at = 0; at <= offsetof(struct tmebox_ctx, rip); at += 8) {
        uint64_t v;
        memcpy(&v, saved + at, 8);
        if (v >= lo && v < hi) {
            v += delta;
            memcpy(saved + at, &v, 8);
        }
    }
    memcpy(saved + offsetof(struct tmebox_ctx, base), &base, 8);
}

uint64_t tmebox_bench_roundtrip(struct tmebox_ctx *c, uint64_t rip, uint64_t rsp,
                                uint64_t ret_addr, uint64_t iterations)
{
    uint64_t t0 = tmebox_monotonic_ns();
    for (uint64_t i = 0; i < iterations; i++)
        if (tmebox_call(c, rip, rsp, ret_addr, i, 0, 0, 0, 0, 0) != TMEBOX_REASON_RETURN)
            return 0;
    return tmebox_monotonic_ns() - t0;
}

uint64_t tmebox_bench_alternate(struct tmebox_ctx *a, uint64_t rip_a, uint64_t rsp_a,
                                uint64_t ret_a, struct tmebox_ctx *b, uint64_t rip_b,
                                uint64_t rsp_b, uint64_t ret_b, uint64_t iterations)
{
    /* Tenant A, back to the host, tenant B, back: each call is a switch between tenants. */
    uint64_t t0 = tmebox_monotonic_ns();
    for (uint64_t i = 0; i < iterations; i++)
        if (tmebox_call(a, rip_a, rsp_a, ret_a, i, 0, 0, 0, 0, 0) != TMEBOX_REASON_RETURN ||
            tmebox_call(b, rip_b, rsp_b, ret_b, i, 0, 0, 0, 0, 0) != TMEBOX_REASON_RETURN)
            return 0;
    return tmebox_monotonic_ns() - t0;
}

uint64_t tmebox_bench_gsbase(uint64_t iterations)
{
    /* The two GS-base writes of a round trip, alone: the floor of its cost. */
    uint64_t base;
    __asm__ volatile("rdgsbase %0" : "=r"(base));
    uint64_t t0 = tmebox_monotonic_ns();
    for (uint64_t i = 0; i < iterations; i++)
        __asm__ volatile("wrgsbase %0\n\twrgsbase %1" : : "r"(base + (1ull << 32)), "r"(base));
    return tmebox_monotonic_ns() - t0;
}

void tmebox_nop(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f,
                uint64_t g, uint64_t h, uint64_t i, uint64_t j)
{
    /* Baseline for the cost of one foreign call with sb.call's argument count. */
    (void)a, (void)b, (void)c, (void)d, (void)e, (void)f, (void)g, (void)h, (void)i, (void)j;
}
