/* bzip2: compress (900k blocks) and decompress a generated corpus in memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "bzlib.h"

void make_corpus(unsigned char *buf, size_t n);

/* Built with BZ_NO_STDIO, libbz2 calls this on an internal inconsistency. */
void bz_internal_error(int errcode)
{
    (void)errcode;
    abort();
}

static char *plain, *packed, *unpacked;
static unsigned plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (unsigned)scale * 32 * 1024;
    packed_cap = plain_len + plain_len / 100 + 600;
    plain = malloc(plain_len);
    packed = malloc(packed_cap);
    unpacked = malloc(plain_len);
    if (!plain || !packed || !unpacked)
        return -1;
    make_corpus((unsigned char *)plain, plain_len);
    return 0;
}

unsigned long long workload_run(void)
{
    unsigned packed_len = packed_cap, out_len = plain_len;
    if (BZ2_bzBuffToBuffCompress(packed, &packed_len, plain, plain_len, 9, 0, 0) != BZ_OK)
        return 0;
    if (BZ2_bzBuffToBuffDecompress(unpacked, &out_len, packed, packed_len, 0, 0) != BZ_OK ||
        out_len != plain_len || memcmp(unpacked, plain, plain_len) != 0)
        return 1;
    uint64_t h = 14695981039346656037ULL;
    for (unsigned i = 0; i < packed_len; i++)
        h = (h ^ (unsigned char)packed[i]) * 1099511628211ULL;
    return h ^ packed_len;
}
