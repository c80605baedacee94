/* bzip2: compress (900k blocks) and decompress a generated corpus in memory. */
#include <stdlib.h>
#include "bzlib.h"
#include "corpus.h"

/* Built with BZ_NO_STDIO, libbz2 calls this on an internal inconsistency. */
void bz_internal_error(int errcode)
{
    (void)errcode;
    abort();
}

static unsigned char *plain, *packed, *unpacked;
static unsigned plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (unsigned)scale * 32 * 1024;
    packed_cap = plain_len + plain_len / 100 + 600;
    return corpus_buffers(plain_len, packed_cap, &plain, &packed, &unpacked);
}

unsigned long long workload_run(void)
{
    unsigned packed_len = packed_cap, out_len = plain_len;
    if (BZ2_bzBuffToBuffCompress((char *)packed, &packed_len, (char *)plain, plain_len, 9, 0,
                                 0) != BZ_OK)
        return 0;
    if (BZ2_bzBuffToBuffDecompress((char *)unpacked, &out_len, (char *)packed, packed_len, 0,
                                   0) != BZ_OK ||
        !corpus_same(plain, plain_len, unpacked, out_len))
        return 1;
    return corpus_hash(packed, packed_len);
}
