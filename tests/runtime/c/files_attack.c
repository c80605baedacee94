/* Raw-syscall attack driver for tests/runtime/test_files_attack.py.

   argv[1] is "top:OFF", the window offset where the sandbox's mapped memory ends; every
   later argument is one step (numbered from 0), which prints one line "<step>=<result>"
   (the raw result of the call: -errno on failure), so a test can pass arguments libc would
   never pass.

   A call step:  "NR,a0,a1,..."  (up to six arguments), where an argument is
     123 / -100 / 0x1f   an integer (strtoll / strtoull)
     'text               a pointer to a NUL-terminated copy of text (no commas; '~' -> '/')
     @N                  a pointer to a new zeroed buffer of N bytes (buffer number = step)
     $k  $k+N            the result of step k (plus N)
     &k                  the buffer made at step k (by @N)
     ^N                  a pointer N bytes below the top of the window, those N bytes
                         filled with 'a' and no NUL after them (an unterminated string at
                         the edge of the sandbox's memory)
   Other steps:
     rep:N:CALL          CALL N times; prints the last result and how many were >= 0
     show:k:LEN          the first LEN bytes of step k's buffer, '.' for unprintables
     u64:k:IDX           the IDX-th u64 of step k's buffer
     touch:MIB           write one byte per page of MIB MiB above the program break
     touchmap:MIB        mmap MIB MiB, munmap it, then write one byte per page of it
*/
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXSTEPS 512

static long results[MAXSTEPS];
static char *bufs[MAXSTEPS];
static uintptr_t top_off;

static uintptr_t window_base(void) {
    int x;
    return (uintptr_t)&x & ~(uintptr_t)0xFFFFFFFF;
}

static long arg(char *s, int step) {
    if (s[0] == '\'') {
        size_t n = strlen(s + 1);
        char *p = calloc(1, n + 1);
        for (size_t i = 0; i < n; i++) p[i] = s[1 + i] == '~' ? '/' : s[1 + i];
        return (long)p;
    }
    if (s[0] == '@') {
        size_t n = strtoull(s + 1, 0, 0);
        bufs[step] = calloc(1, n ? n : 1);
        return (long)bufs[step];
    }
    if (s[0] == '$') {
        char *plus = strchr(s, '+');
        return results[atoi(s + 1)] + (plus ? (long)strtoull(plus + 1, 0, 0) : 0);
    }
    if (s[0] == '&') return (long)bufs[atoi(s + 1)];
    if (s[0] == '^') {
        size_t n = strtoull(s + 1, 0, 0);
        char *p = (char *)(window_base() + top_off - n);
        memset(p, 'a', n);
        return (long)p;
    }
    if (s[0] == '-') return strtoll(s, 0, 0);
    return (long)strtoull(s, 0, 0);
}

static long call(char *spec, int step) {
    char copy[1024];
    long a[7] = {0};
    int n = 0;
    strncpy(copy, spec, sizeof copy - 1);
    for (char *t = strtok(copy, ","); t && n < 7; t = strtok(0, ",")) a[n++] = arg(t, step);
    long r = syscall(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    return r < 0 ? -errno : r;
}

static void touch(char *p, size_t mib) {
    for (size_t i = 0; i < (mib << 20); i += 4096) p[i] = 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || strncmp(argv[1], "top:", 4)) return 2;
    top_off = strtoull(argv[1] + 4, 0, 0);
    for (int i = 0; i + 2 < argc && i < MAXSTEPS; i++) {
        char *s = argv[i + 2];
        long r = 0;
        if (!strncmp(s, "rep:", 4)) {
            char *c = strchr(s + 4, ':');
            long n = atol(s + 4), ok = 0;
            for (long k = 0; k < n; k++) ok += (r = call(c + 1, i)) >= 0;
            printf("%d=%ld ok=%ld\n", i, r, ok);
            results[i] = r;
            continue;
        } else if (!strncmp(s, "show:", 5)) {
            char *c = strchr(s + 5, ':');
            int k = atoi(s + 5), len = atoi(c + 1);
            printf("%d=", i);
            for (int j = 0; j < len; j++) {
                char ch = bufs[k][j];
                putchar(ch >= 32 && ch < 127 ? ch : '.');
            }
            printf("\n");
            continue;
        } else if (!strncmp(s, "u64:", 4)) {
            char *c = strchr(s + 4, ':');
            r = (long)((uint64_t *)bufs[atoi(s + 4)])[atoi(c + 1)];
        } else if (!strncmp(s, "touch:", 6)) {
            touch((char *)(((uintptr_t)sbrk(0) + 0xFFFFF) & ~(uintptr_t)0xFFFFF), atol(s + 6));
        } else if (!strncmp(s, "touchmap:", 9)) {
            size_t n = (size_t)atol(s + 9) << 20;
            char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { r = -errno; goto out; }
            munmap(p, n);
            touch(p, atol(s + 9));
        } else {
            r = call(s, i);
        }
    out:
        results[i] = r;
        printf("%d=%ld\n", i, r);
        fflush(stdout);
    }
    return 0;
}
