/* xz (liblzma): .xz container, LZMA2 preset 1, CRC64: compress and decompress a
 * generated corpus in memory with the single-call buffer API. */
#include "corpus.h"
#include "lzma.h"

static unsigned char *plain, *packed, *unpacked;
static size_t plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (size_t)scale * 32 * 1024;
    packed_cap = lzma_stream_buffer_bound(plain_len);
    return corpus_buffers(plain_len, packed_cap, &plain, &packed, &unpacked);
}

unsigned long long workload_run(void)
{
    size_t packed_len = 0, in_pos = 0, out_len = 0;
    if (lzma_easy_buffer_encode(1, LZMA_CHECK_CRC64, NULL, plain, plain_len, packed,
                                &packed_len, packed_cap) != LZMA_OK)
        return 0;
    uint64_t memlimit = UINT64_MAX;
    if (lzma_stream_buffer_decode(&memlimit, 0, NULL, packed, &in_pos, packed_len, unpacked,
                                  &out_len, plain_len) != LZMA_OK ||
        !corpus_same(plain, plain_len, unpacked, out_len))
        return 1;
    return corpus_hash(packed, packed_len);
}
