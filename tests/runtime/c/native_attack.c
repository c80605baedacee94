/* A hostile tenant for tests/runtime/test_native_attack.py: raw runtime calls with
 * whatever arguments Python passes, edge pointers, and vector-state games. */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <tmebox.h>

static char big[3 << 20] __attribute__((aligned(4096)));
char data_word[4096] __attribute__((aligned(4096))) = "snapshot-data";
uint64_t ptr_words[4];

long sys4(long nr, long a0, long a1, long a2, long a3) {
    long r;
    register long r10 __asm__("r10") = a3;
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
}
long buf(void) { return (long)(uintptr_t)big; }
long heap_top(void) { return (long)(uintptr_t)sbrk(0); }
long poke(long addr, long v) { *(volatile uint64_t *)(uintptr_t)addr = (uint64_t)v; return 0; }
long peek(long addr) { return (long)*(volatile uint64_t *)(uintptr_t)addr; }
long pokeb(long addr, long n, long v) { memset((void *)(uintptr_t)addr, (int)v, (size_t)n); return 0; }
long data_addr(void) { return (long)(uintptr_t)data_word; }
long data_peek(void) { return data_word[0]; }
long data_set(long c) { data_word[0] = (char)c; return 0; }
long ptr_set(long i, long v) { ptr_words[i] = (uint64_t)v; return 0; }
long ptr_get(long i) { return (long)ptr_words[i]; }
long ptr_addr(void) { return (long)(uintptr_t)ptr_words; }

/* A host-function runtime call number (or any) with odd control words and a pending x87
   exception set first; returns (mxcsr << 32) | (fcw << 16) | (fsw & 0xff) seen after it,
   and stores the OR of every %xmm after the call at *or_out. */
long odd_controls(long nr, long or_out) {
    uint32_t mx = 0x3f80 | 0x6000 /* round to zero */ | 0x1 /* IE flag sticky */, mx2;
    uint16_t cw = 0x027b /* ZE unmasked, double precision */, cw2, sw;
    uint16_t ok = 0x037f;
    uint32_t okmx = 0x1f80;
    uint64_t acc = 0, v[2];
    long r;
    __asm__ volatile("pcmpeqd %%xmm3, %%xmm3" ::: "xmm3");
    __asm__ volatile("ldmxcsr %0" :: "m"(mx));
    __asm__ volatile("fldcw %0" :: "m"(cw));
    __asm__ volatile("fld1\n\tfldz\n\tfdivrp\n\t" ::: "st");  /* 1/0: ZE pending */
    __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(0) : "rcx", "r11", "memory");
    __asm__ volatile("stmxcsr %0" : "=m"(mx2));
    __asm__ volatile("fnstcw %0" : "=m"(cw2));
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    __asm__ volatile("fnclex");
    __asm__ volatile("fldcw %0" :: "m"(ok));
    __asm__ volatile("ldmxcsr %0" :: "m"(okmx));
    __asm__ volatile("fninit");
#define RD(n) __asm__ volatile("movdqu %%xmm" #n ", %0" : "=m"(v)); acc |= v[0] | v[1];
    RD(0) RD(1) RD(2) RD(3) RD(4) RD(5) RD(6) RD(7)
    RD(8) RD(9) RD(10) RD(11) RD(12) RD(13) RD(14) RD(15)
    *(volatile uint64_t *)(uintptr_t)or_out = acc;
    (void)r;
    return ((long)mx2 << 32) | ((long)cw2 << 16) | (sw & 0xff);
}

/* The stack moved into an mmap area, then a raw runtime call made on it: munmap(p, size)
   (takes the stack away under itself) or, with unmap 0, clock_gettime(0, p) (serviced
   in C, writing into the moved stack's area). */
long syscall_on_mmap_stack(long size, long unmap) {
    char *p = mmap(0, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    long r, a0 = unmap ? (long)p : 0, a1 = unmap ? size : (long)p;
    __asm__ volatile(
        "movq %%rsp, %%r12\n\t"
        "movq %1, %%rsp\n\t"
        "movq %2, %%rdi\n\t"
        "movq %3, %%rsi\n\t"
        "syscall\n\t"
        "movq %%r12, %%rsp\n\t"
        : "=a"(r) : "r"(p + size - 64), "r"(a0), "r"(a1), "a"(unmap ? 11L : 228L)
        : "rcx", "r11", "r12", "rdi", "rsi", "memory");
    return r;
}
int main(void) { return 0; }
