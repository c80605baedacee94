/* xz (liblzma): .xz container, LZMA2 preset 1, CRC64: compress and decompress a
 * generated corpus in memory with the single-call buffer API. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lzma.h"

void make_corpus(unsigned char *buf, size_t n);

static uint8_t *plain, *packed, *unpacked;
static size_t plain_len, packed_cap;

int workload_init(long scale)
{
    plain_len = (size_t)scale * 32 * 1024;
    packed_cap = lzma_stream_buffer_bound(plain_len);
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
    size_t packed_len = 0, in_pos = 0, out_len = 0;
    if (lzma_easy_buffer_encode(1, LZMA_CHECK_CRC64, NULL, plain, plain_len, packed,
                                &packed_len, packed_cap) != LZMA_OK)
        return 0;
    uint64_t memlimit = UINT64_MAX;
    if (lzma_stream_buffer_decode(&memlimit, 0, NULL, packed, &in_pos, packed_len, unpacked,
                                  &out_len, plain_len) != LZMA_OK ||
        out_len != plain_len || memcmp(unpacked, plain, plain_len) != 0)
        return 1;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < packed_len; i++)
        h = (h ^ packed[i]) * 1099511628211ULL;
    return h ^ packed_len;
}
