/* Stack-heavy recursion: many small calls and returns (code+data turns every
 * ret into pop/mask/jmp and pads every call to a bundle end), and a recursion
 * that keeps a buffer in each frame (%rsp-relative stores through %gs). */
#include <stdint.h>
#include <string.h>

static long reps;

__attribute__((noinline)) static uint64_t fib(int n)
{
    return n < 2 ? (uint64_t)n : fib(n - 1) + fib(n - 2);
}

__attribute__((noinline)) static uint64_t frames(int depth, uint64_t seed)
{
    volatile uint8_t buf[96];
    for (int i = 0; i < (int)sizeof buf; i++)
        buf[i] = (uint8_t)(seed >> (i & 31)) ^ (uint8_t)i;
    uint64_t below = depth ? frames(depth - 1, seed * 6364136223846793005ULL + 1) : seed;
    uint64_t h = below;
    for (int i = 0; i < (int)sizeof buf; i += 8)
        h = (h ^ buf[i]) * 1099511628211ULL;
    return h;
}

int workload_init(long scale)
{
    reps = scale;
    return 0;
}

unsigned long long workload_run(void)
{
    uint64_t h = 0;
    for (long r = 0; r < reps; r++) {
        h = h * 31 + fib(24);
        for (int k = 0; k < 64; k++)
            h ^= frames(200, h + (uint64_t)k);
    }
    return h;
}
