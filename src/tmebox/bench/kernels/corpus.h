/* The generated corpus of the compression workloads (corpus.c). */
#ifndef TMEBOX_BENCH_CORPUS_H
#define TMEBOX_BENCH_CORPUS_H
#include <stddef.h>
#include <stdint.h>

void make_corpus(unsigned char *buf, size_t n);
/* plain: the corpus, n bytes; packed: cap bytes; unpacked: n bytes. -1 if out of memory. */
int corpus_buffers(size_t n, size_t cap, unsigned char **plain, unsigned char **packed,
                   unsigned char **unpacked);
/* Whether a round trip gave back the n bytes of plain. */
int corpus_same(const unsigned char *plain, size_t n, const unsigned char *out, size_t out_len);
/* FNV-1a of buf, mixed with its length: the checksum of a compressed form. */
uint64_t corpus_hash(const unsigned char *buf, size_t n);
#endif
