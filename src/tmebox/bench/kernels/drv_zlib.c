/* zlib: deflate (level 6) and inflate a generated corpus, all in memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "zlib.h"

void make_corpus(unsigned char *buf, size_t n);

static unsigned char *plain, *packed, *unpacked;
static uLong plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (uLong)scale * 64 * 1024;
    packed_cap = compressBound(plain_len);
    plain = malloc(plain_len);
    packed = malloc(packed_cap);
    unpacked = malloc(plain_len);
    if (!plain || !packed || !unpacked)
        return -1;
    make_corpus(plain, plain_len);
    return 0;
}

unsigned long long workload_run(void)
{
    uLongf packed_len = packed_cap, out_len = plain_len;
    if (compress2(packed, &packed_len, plain, plain_len, 6) != Z_OK)
        return 0;
    if (uncompress(unpacked, &out_len, packed, packed_len) != Z_OK || out_len != plain_len ||
        memcmp(unpacked, plain, plain_len) != 0)
        return 1;
    return ((unsigned long long)adler32(1L, packed, (uInt)packed_len) << 32) ^ packed_len;
}
