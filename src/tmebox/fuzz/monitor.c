/* The escape fuzzer's monitor: runs sandbox code on the real CPU in a traced child whose
 * address space holds nothing but one sandbox window (docs/escape-fuzzer.md).
 *
 * usage: monitor GUARD IMAGE_OFFSET CODE_SIZE RW_END TOP_SIZE CODE_OFFSET FS_BASE TIMEOUT_US
 *                BASE...
 * All numbers may be hex (0x...). Offsets are image offsets unless named otherwise; the image
 * sits at window offset IMAGE_OFFSET. The child maps [IMAGE_OFFSET, +CODE_SIZE) R+X (runtime
 * page of int3, then the sequences at CODE_OFFSET), [CODE_SIZE, RW_END) R+W and the TOP_SIZE
 * bytes below the window's high guard R+W, installs a seccomp filter that hands every system
 * call to this tracer, unmaps everything else (its own text, stack, heap, vdso, vvar) from a
 * stub inside the window and traps. From then on it only ever runs sequences.
 *
 * Protocol (native endianness, stdin -> stdout): a batch is {u32 magic 'TMEF', u32 count}
 * followed by count requests {u32 code_len, u32 start, u32 base_index, u32 rel_mask,
 * u64 regs[16] (rax rcx rdx rbx rsp rbp rsi rdi r8..r15), u64 rflags, code bytes}; for each the
 * monitor writes one response {u32 kind, i32 signo, i32 si_code, u32 flags, u64 fault_addr,
 * u64 base, u64 stack[2], struct user_regs_struct regs}, and flushes after the batch.
 * regs[i] gets the window base added if bit i of rel_mask is set; %r14 and the gs base are
 * always the window base. Policy (what is an escape) is the caller's; this program only
 * reports where each sequence stopped and why.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x46454d54u /* "TMEF" */
#define MAX_CODE (1u << 15)
#define MAX_BASES 16
#define MAX_RANGES 128
#define FILL_SIZE (64u << 10) /* bytes of pattern around the initial stack */

enum kind { K_SIGNAL = 0, K_SYSCALL = 1, K_TIMEOUT = 2, K_DIED = 3 };
enum flag { F_SELECTORS = 1, F_STACK = 2 };

struct request {
    uint32_t code_len, start, base_index, rel_mask;
    uint64_t regs[16];
    uint64_t rflags;
};

struct response {
    uint32_t kind;
    int32_t signo, si_code;
    uint32_t flags;
    uint64_t fault_addr, base, stack[2];
    struct user_regs_struct regs;
};

static uint64_t guard, image_offset, code_size, rw_end, top_size, code_offset, fs_base;
static long timeout_us;
static uint64_t bases[MAX_BASES];
static int nbases;

/* The current child. */
static pid_t child = -1;
static int child_mem = -1;
static int child_base_index = -1;
static struct user_regs_struct initial; /* selectors as the kernel set them */
static uint32_t written_len; /* bytes of sequence code currently in the code region */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("monitor: ", stderr);
    vfprintf(stderr, fmt, ap);
    if (errno) fprintf(stderr, ": %s", strerror(errno));
    fputc('\n', stderr);
    va_end(ap);
    if (child > 0) kill(child, SIGKILL);
    exit(2);
}

static uint64_t window_base(void) { return bases[child_base_index]; }
static uint64_t image_addr(uint64_t offset) { return window_base() + image_offset + offset; }

/* The stub the child runs from inside the window: munmap each (addr, len) pair at %rdi until
 * len 0, then int3. It is overwritten with int3 before any sequence runs. */
static const uint8_t unmap_stub[] = {
    0x48, 0x89, 0xfb,             /* mov rbx, rdi */
    0x48, 0x8b, 0x3b,             /* L: mov rdi, [rbx] */
    0x48, 0x8b, 0x73, 0x08,       /* mov rsi, [rbx + 8] */
    0x48, 0x85, 0xf6,             /* test rsi, rsi */
    0x74, 0x0d,                   /* jz done */
    0xb8, SYS_munmap, 0, 0, 0,    /* mov eax, SYS_munmap */
    0x0f, 0x05,                   /* syscall */
    0x48, 0x83, 0xc3, 0x10,       /* add rbx, 16 */
    0xeb, 0xe7,                   /* jmp L */
    0xcc,                         /* done: int3 */
};
#define STUB_OFFSET 0x800 /* a runtime-page slot that is not an entry */

static void *map_fixed(uint64_t addr, uint64_t len, int prot) {
    void *p = mmap((void *)addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE |
                   MAP_NORESERVE, -1, 0);
    if (p != (void *)addr) _exit(10);
    return p;
}

/* In the child: build the window, collect every other mapping, trap, and unmap them. */
static void child_main(uint64_t base) {
    if (ptrace(PTRACE_TRACEME, 0, 0, 0)) _exit(11);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL)) _exit(12);
    uint64_t image = base + image_offset;
    uint8_t *code = map_fixed(image, code_size, PROT_READ | PROT_WRITE);
    memset(code, 0xcc, code_size);
    memcpy(code + STUB_OFFSET, unmap_stub, sizeof unmap_stub);
    if (mprotect(code, code_size, PROT_READ | PROT_EXEC)) _exit(13);
    uint64_t *ranges = map_fixed(image + code_size, rw_end - code_size, PROT_READ | PROT_WRITE);
    map_fixed(base + (1ull << 32) - guard - top_size, top_size, PROT_READ | PROT_WRITE);

    /* Everything in /proc/self/maps that is not ours. [vsyscall] cannot be unmapped; it is
     * execute-only (reads fault) and the seccomp filter sees its emulated calls. */
    static char maps[1 << 16];
    int fd = open("/proc/self/maps", O_RDONLY);
    ssize_t n, got = 0;
    while (fd >= 0 && (n = read(fd, maps + got, sizeof maps - 1 - got)) > 0) got += n;
    if (fd < 0 || got <= 0) _exit(14);
    close(fd);
    maps[got] = 0;
    int count = 0;
    for (char *line = maps; *line && count < MAX_RANGES - 1;) {
        uint64_t lo, hi;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64, &lo, &hi) == 2 && lo < (1ull << 47) &&
            !(lo >= base && hi <= base + (1ull << 32))) {
            ranges[2 * count] = lo;
            ranges[2 * count + 1] = hi - lo;
            count++;
        }
        char *nl = strchr(line, '\n');
        if (!nl) break;
        line = nl + 1;
    }
    ranges[2 * count] = ranges[2 * count + 1] = 0;

    /* glibc registered an rseq area in the TLS; the kernel would write it on every return to
     * user mode and kill the child once the TLS is gone. */
    char *rseq_area = (char *)__builtin_thread_pointer() + __rseq_offset;
    if (__rseq_size && syscall(SYS_rseq, rseq_area, sizeof(struct rseq), RSEQ_FLAG_UNREGISTER,
                               RSEQ_SIG) &&
        syscall(SYS_rseq, rseq_area, __rseq_size, RSEQ_FLAG_UNREGISTER, RSEQ_SIG))
        _exit(16);
    raise(SIGSTOP); /* the tracer sets its options */
    struct sock_filter trace_all = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE);
    struct sock_fprog prog = {1, &trace_all};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
        _exit(15);
    uint64_t stack = image + rw_end - 4096;
    __asm__ volatile("mov %0, %%rsp\n\tjmp *%1" ::"r"(stack), "r"(image + STUB_OFFSET),
                     "D"(ranges) : "memory");
    __builtin_unreachable();
}

static int wait_child(int *status) {
    for (;;) {
        pid_t r = waitpid(child, status, __WALL);
        if (r == child) return 0;
        if (r < 0 && errno != EINTR) die("waitpid");
    }
}

static void kill_child(void) {
    if (child <= 0) return;
    kill(child, SIGKILL);
    int status;
    while (waitpid(child, &status, __WALL) == child && !WIFEXITED(status) &&
           !WIFSIGNALED(status)) {
    }
    close(child_mem);
    child = -1;
    child_mem = -1;
    child_base_index = -1;
}

static void poke(uint64_t addr, const void *buf, size_t len) {
    if (pwrite(child_mem, buf, len, (off_t)addr) != (ssize_t)len) die("write child memory");
}

/* Which maps the child has left: exactly our three regions (and [vsyscall]). */
static void check_maps(uint64_t base) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", child);
    FILE *f = fopen(path, "r");
    if (!f) die("open %s", path);
    int ours = 0;
    while (fgets(line, sizeof line, f)) {
        uint64_t lo, hi;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64, &lo, &hi) != 2) continue;
        if (lo >= (1ull << 47)) continue; /* [vsyscall] */
        errno = 0;
        if (!(lo >= base && hi <= base + (1ull << 32))) die("child still maps %s", line);
        ours++;
    }
    fclose(f);
    errno = 0;
    if (ours != 3) die("child maps %d regions in its window, not 3", ours);
}

/* Deterministic pattern around the initial stack: window pointers, code pointers, small
 * numbers and zeros, so that pops, returns and loads see values worth having. */
static void fill_pattern(uint64_t base, int base_index) {
    static uint64_t words[FILL_SIZE / 8];
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(base_index + 1);
    for (size_t i = 0; i < FILL_SIZE / 8; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        switch (x % 5) {
        case 0: words[i] = 0; break;
        case 1: words[i] = x >> 58; break;
        case 2: words[i] = base + image_offset + code_offset + ((x >> 20) % 2048) * 32; break;
        case 3: words[i] = base + image_offset + code_size + (x >> 20) % (rw_end - code_size);
            break;
        default: words[i] = x; break;
        }
    }
    poke(base + image_offset + (rw_end + code_size) / 2 - FILL_SIZE / 2, words, sizeof words);
}

static void spawn(int base_index) {
    kill_child();
    uint64_t base = bases[base_index];
    fflush(stdout);
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) child_main(base);
    child_base_index = base_index;
    int status;
    wait_child(&status);
    errno = 0;
    if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP)
        die("child did not reach its first stop (status %#x)", status);
    if (ptrace(PTRACE_SETOPTIONS, child, 0, PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP))
        die("PTRACE_SETOPTIONS");
    /* Setup: let the munmap calls of the stub through, until it traps. */
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_CONT, child, 0, sig)) die("PTRACE_CONT");
        sig = 0;
        wait_child(&status);
        errno = 0;
        if (!WIFSTOPPED(status)) die("child died during setup (status %#x)", status);
        if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
            struct user_regs_struct r;
            if (ptrace(PTRACE_GETREGS, child, 0, &r)) die("PTRACE_GETREGS");
            errno = 0;
            if (r.orig_rax != SYS_munmap) die("setup system call %llu", r.orig_rax);
            continue;
        }
        if (WSTOPSIG(status) == SIGTRAP) break;
        if (WSTOPSIG(status) == SIGSTOP) continue;
        struct user_regs_struct r;
        siginfo_t si;
        ptrace(PTRACE_GETREGS, child, 0, &r);
        ptrace(PTRACE_GETSIGINFO, child, 0, &si);
        errno = 0;
        die("child stopped by signal %d during setup at %#llx (address %p)", WSTOPSIG(status),
            r.rip, si.si_addr);
    }
    if (ptrace(PTRACE_GETREGS, child, 0, &initial)) die("PTRACE_GETREGS");
    errno = 0;
    if (initial.rip != image_addr(STUB_OFFSET) + sizeof unmap_stub)
        die("setup ended at %#llx", initial.rip);
    check_maps(base);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", child);
    child_mem = open(path, O_RDWR);
    if (child_mem < 0) die("open %s", path);
    uint8_t int3[sizeof unmap_stub];
    memset(int3, 0xcc, sizeof int3);
    poke(image_addr(STUB_OFFSET), int3, sizeof int3);
    fill_pattern(base, base_index);
    written_len = 0;
}

static void read_exact(void *buf, size_t len) {
    if (len && fread(buf, 1, len, stdin) != len) {
        if (feof(stdin)) {
            kill_child();
            exit(0);
        }
        die("read stdin");
    }
}

static long elapsed_us(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000L + (t.tv_nsec - t0->tv_nsec) / 1000;
}

/* Wait for the child's next stop, at most timeout_us; 0 on timeout. */
static int wait_stop(int *status) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pid_t r = waitpid(child, status, __WALL | WNOHANG);
        if (r == child) return 1;
        if (r < 0 && errno != EINTR) die("waitpid");
        long left = timeout_us - elapsed_us(&t0);
        if (left <= 0) return 0;
        struct timespec ts = {left / 1000000, (left % 1000000) * 1000};
        sigtimedwait(&chld, NULL, &ts);
    }
}

static void set_state(const struct request *q) {
    uint64_t base = window_base();
    static const size_t slot[16] = {
        offsetof(struct user_regs_struct, rax), offsetof(struct user_regs_struct, rcx),
        offsetof(struct user_regs_struct, rdx), offsetof(struct user_regs_struct, rbx),
        offsetof(struct user_regs_struct, rsp), offsetof(struct user_regs_struct, rbp),
        offsetof(struct user_regs_struct, rsi), offsetof(struct user_regs_struct, rdi),
        offsetof(struct user_regs_struct, r8), offsetof(struct user_regs_struct, r9),
        offsetof(struct user_regs_struct, r10), offsetof(struct user_regs_struct, r11),
        offsetof(struct user_regs_struct, r12), offsetof(struct user_regs_struct, r13),
        offsetof(struct user_regs_struct, r14), offsetof(struct user_regs_struct, r15)};
    struct user_regs_struct r = initial;
    for (int i = 0; i < 16; i++) {
        uint64_t v = q->regs[i] + ((q->rel_mask >> i & 1) ? base : 0);
        memcpy((char *)&r + slot[i], &v, sizeof v);
    }
    r.r14 = base;
    r.gs_base = base;
    r.fs_base = fs_base;
    r.rip = image_addr(code_offset) + q->start;
    r.orig_rax = (unsigned long long)-1;
    r.eflags = 0x202 | (q->rflags & 0xcd5); /* IF, and CF PF AF ZF SF DF OF from the caller */
    if (ptrace(PTRACE_SETREGS, child, 0, &r)) die("PTRACE_SETREGS");
    /* A clean x87/SSE state with the XMM registers filled from the GPR values. */
    struct user_fpregs_struct fp;
    memset(&fp, 0, sizeof fp);
    fp.cwd = 0x37f;
    fp.mxcsr = 0x1f80;
    for (int i = 0; i < 16; i++) {
        memcpy((char *)fp.xmm_space + 16 * i, &q->regs[i], 8);
        memcpy((char *)fp.xmm_space + 16 * i + 8, &q->regs[(i + 5) % 16], 8);
    }
    if (ptrace(PTRACE_SETFPREGS, child, 0, &fp)) die("PTRACE_SETFPREGS");
}

static void run_one(const struct request *q, const uint8_t *code, struct response *out) {
    if (q->base_index >= (uint32_t)nbases) die("base index %u", q->base_index);
    if (child <= 0 || child_base_index != (int)q->base_index) spawn((int)q->base_index);
    static uint8_t buf[MAX_CODE];
    uint32_t len = q->code_len > written_len ? q->code_len : written_len;
    memcpy(buf, code, q->code_len);
    memset(buf + q->code_len, 0xcc, len - q->code_len);
    poke(image_addr(code_offset), buf, len);
    written_len = q->code_len;
    set_state(q);
    memset(out, 0, sizeof *out);
    out->base = window_base();
    if (ptrace(PTRACE_CONT, child, 0, 0)) die("PTRACE_CONT");
    int status;
    if (!wait_stop(&status)) {
        out->kind = K_TIMEOUT;
        kill_child();
        return;
    }
    if (!WIFSTOPPED(status)) {
        out->kind = K_DIED;
        out->signo = WIFSIGNALED(status) ? WTERMSIG(status) : -WEXITSTATUS(status);
        child = -1; /* reaped */
        close(child_mem);
        child_base_index = -1;
        return;
    }
    if (ptrace(PTRACE_GETREGS, child, 0, &out->regs)) die("PTRACE_GETREGS");
    const struct user_regs_struct *r = &out->regs;
    if (r->cs != initial.cs || r->ss != initial.ss || r->ds != initial.ds ||
        r->es != initial.es || r->fs != initial.fs || r->gs != initial.gs)
        out->flags |= F_SELECTORS;
    if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
        out->kind = K_SYSCALL;
        kill_child(); /* the call never runs */
        return;
    }
    out->kind = K_SIGNAL;
    out->signo = WSTOPSIG(status);
    siginfo_t si;
    if (ptrace(PTRACE_GETSIGINFO, child, 0, &si) == 0) {
        out->si_code = si.si_code;
        out->fault_addr = (uint64_t)si.si_addr;
    }
    if (pread(child_mem, out->stack, sizeof out->stack, (off_t)r->rsp) ==
        (ssize_t)sizeof out->stack)
        out->flags |= F_STACK;
    /* The child stays in its signal-delivery stop; the next PTRACE_CONT with signal 0
     * discards the signal, so no signal frame is ever written. */
}

static uint64_t number(const char *s) {
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end || end == s) die("bad number %s", s);
    return v;
}

int main(int argc, char **argv) {
    if (argc < 10) {
        fprintf(stderr, "usage: %s GUARD IMAGE_OFFSET CODE_SIZE RW_END TOP_SIZE CODE_OFFSET "
                "FS_BASE TIMEOUT_US BASE...\n", argv[0]);
        return 2;
    }
    guard = number(argv[1]);
    image_offset = number(argv[2]);
    code_size = number(argv[3]);
    rw_end = number(argv[4]);
    top_size = number(argv[5]);
    code_offset = number(argv[6]);
    fs_base = number(argv[7]);
    timeout_us = (long)number(argv[8]);
    for (int i = 9; i < argc && nbases < MAX_BASES; i++) bases[nbases++] = number(argv[i]);
    errno = 0;
    if (code_offset + MAX_CODE > code_size || rw_end <= code_size) die("bad layout");
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    static uint8_t code[MAX_CODE];
    for (;;) {
        uint32_t header[2];
        read_exact(header, sizeof header);
        errno = 0;
        if (header[0] != MAGIC) die("bad batch magic %#x", header[0]);
        for (uint32_t i = 0; i < header[1]; i++) {
            struct request q;
            read_exact(&q, sizeof q);
            errno = 0;
            if (q.code_len > MAX_CODE || q.start >= MAX_CODE) die("bad request");
            read_exact(code, q.code_len);
            struct response out;
            run_one(&q, code, &out);
            if (fwrite(&out, sizeof out, 1, stdout) != 1) die("write stdout");
        }
        if (fflush(stdout)) die("flush stdout");
    }
}
