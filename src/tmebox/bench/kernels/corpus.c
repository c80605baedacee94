/* A deterministic, compressible text corpus for the compression workloads:
 * words drawn from a small vocabulary with a skewed distribution, plus
 * punctuation and line breaks, so that both LZ77 and BWT find structure. */
#include <stdlib.h>
#include <string.h>
#include "corpus.h"

static const char *const words[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with",
    "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
    "but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
    "sandbox", "window", "memory", "encryption", "tenant", "process", "isolation",
    "instruction", "segment", "verifier", "compiler", "bundle", "register", "keyid",
};

void make_corpus(unsigned char *buf, size_t n)
{
    uint64_t x = 0x2545f4914f6cdd1dULL;
    size_t i = 0, col = 0;
    const size_t nwords = sizeof words / sizeof words[0];
    while (i < n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* min of two draws: small indices (common words) are more likely */
        size_t a = (size_t)(x % nwords), b = (size_t)((x >> 32) % nwords);
        const char *w = words[a < b ? a : b];
        size_t len = strlen(w);
        for (size_t k = 0; k < len && i < n; k++)
            buf[i++] = (unsigned char)w[k];
        col += len + 1;
        if (i < n)
            buf[i++] = (x >> 20) % 17 == 0 ? ',' : (col > 72 ? (col = 0, '\n') : ' ');
    }
}

int corpus_buffers(size_t n, size_t cap, unsigned char **plain, unsigned char **packed,
                   unsigned char **unpacked)
{
    *plain = malloc(n);
    *packed = malloc(cap);
    *unpacked = malloc(n);
    if (!*plain || !*packed || !*unpacked)
        return -1;
    make_corpus(*plain, n);
    return 0;
}

int corpus_same(const unsigned char *plain, size_t n, const unsigned char *out, size_t out_len)
{
    return out_len == n && memcmp(plain, out, n) == 0;
}

uint64_t corpus_hash(const unsigned char *buf, size_t n)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ buf[i]) * 1099511628211ULL;
    return h ^ n;
}
