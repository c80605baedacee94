/* zlib: deflate (level 6) and inflate a generated corpus, all in memory. */
#include "corpus.h"
#include "zlib.h"

static unsigned char *plain, *packed, *unpacked;
static uLong plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (uLong)scale * 64 * 1024;
    packed_cap = compressBound(plain_len);
    return corpus_buffers(plain_len, packed_cap, &plain, &packed, &unpacked);
}

unsigned long long workload_run(void)
{
    uLongf packed_len = packed_cap, out_len = plain_len;
    if (compress2(packed, &packed_len, plain, plain_len, 6) != Z_OK)
        return 0;
    if (uncompress(unpacked, &out_len, packed, packed_len) != Z_OK ||
        !corpus_same(plain, plain_len, unpacked, out_len))
        return 1;
    return ((unsigned long long)adler32(1L, packed, (uInt)packed_len) << 32) ^ packed_len;
}
