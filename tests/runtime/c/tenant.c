/* A sandbox tenant exercising libc through the runtime calls, plus exports that fault. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>

int count_vowels(const char *s, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += s[i] && strchr("aeiouAEIOU", s[i]) != NULL;
    return c;
}

long heap_churn(int rounds)
{
    /* small blocks (brk) and large ones (mmap), freed and reused */
    long sum = 0;
    for (int r = 0; r < rounds; r++) {
        char *small = malloc(100 + r);
        char *big = malloc(300000 + r);
        if (!small || !big)
            return -1;
        memset(small, 1, 100 + r);
        memset(big, 2, 300000 + r);
        sum += small[99] + big[299999];
        free(small);
        free(big);
    }
    return sum;
}

int null_write(int v)
{
    volatile int *p = 0;
    *p = v;
    return v;
}

int recurse(int n)
{
    volatile char pad[256];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}

int divide(int a, int b) { return a / b; }

int spin(int n)
{
    volatile unsigned x = 0;
    for (;;)
        x += n;
}

void do_abort(void) { abort(); }

int uses_time_and_random(void)
{
    struct timespec ts;
    unsigned char r[16] = {0};
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0 || ts.tv_sec <= 0)
        return 1;
    if (getrandom(r, sizeof r, 0) != sizeof r)
        return 2;
    int zero = 1;
    for (unsigned i = 0; i < sizeof r; i++)
        zero &= r[i] == 0;
    if (zero)
        return 3;
    void *m = mmap(0, 8192, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED)
        return 4; /* executable memory must be refused */
    if (fopen("/etc/passwd", "r") != NULL)
        return 5; /* no files */
    return 0;
}

int main(int argc, char **argv)
{
    char line[256];
    printf("argc=%d", argc);
    for (int i = 0; i < argc; i++)
        printf(" [%s]", argv[i]);
    printf("\n");
    if (fgets(line, sizeof line, stdin))
        printf("vowels=%d\n", count_vowels(line, (int)strlen(line)));
    fprintf(stderr, "to stderr\n");
    if (heap_churn(50) != 150)
        return 100;
    return uses_time_and_random() ? 101 : 7;
}
