/* memcpy of sizes from 8 bytes to 256 KiB through musl's memcpy (its string
 * instruction is the one the rewriter confines), the same number of bytes per size. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUF (1L << 20)
#define NSIZES 11

static const long sizes[NSIZES] = {8, 16, 32, 64, 128, 256, 1024, 4096, 16384, 65536, 262144};
static long volatile vsizes[NSIZES];
static uint8_t *src, *dst;
static long per_size;

int workload_init(long scale)
{
    src = malloc(BUF);
    dst = malloc(BUF);
    if (!src || !dst)
        return -1;
    uint32_t x = 12345;
    for (long i = 0; i < BUF; i++) {
        x = x * 1103515245u + 12345u;
        src[i] = (uint8_t)(x >> 16);
    }
    for (int i = 0; i < NSIZES; i++)
        vsizes[i] = sizes[i];
    per_size = scale * (4L << 20);
    return 0;
}

unsigned long long workload_run(void)
{
    uint64_t h = 0;
    for (int s = 0; s < NSIZES; s++) {
        long n = vsizes[s];
        long off = 0;
        for (long done = 0; done < per_size; done += n) {
            memcpy(dst + off, src + ((off * 7) & (BUF - n)), (size_t)n);
            h = h * 131 + dst[off + n - 1];
            off += n;
            if (off + n > BUF)
                off = 0;
        }
    }
    return h;
}
