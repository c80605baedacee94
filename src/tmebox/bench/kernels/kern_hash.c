/* An open-addressing hash table (linear probing, 2^17 slots): inserts then
 * hits and misses; data-dependent loads and stores spread over 2 MiB. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS (1L << 17)
#define KEYS 90000L

struct slot {
    uint64_t key;
    uint64_t val;
};

static struct slot *table;
static long passes;

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
}

static void insert(uint64_t key, uint64_t val)
{
    uint64_t i = mix(key) & (SLOTS - 1);
    while (table[i].key && table[i].key != key)
        i = (i + 1) & (SLOTS - 1);
    table[i].key = key;
    table[i].val = val;
}

static uint64_t lookup(uint64_t key)
{
    uint64_t i = mix(key) & (SLOTS - 1);
    while (table[i].key) {
        if (table[i].key == key)
            return table[i].val;
        i = (i + 1) & (SLOTS - 1);
    }
    return 0;
}

int workload_init(long scale)
{
    table = malloc(SLOTS * sizeof *table);
    if (!table)
        return -1;
    passes = scale;
    return 0;
}

unsigned long long workload_run(void)
{
    uint64_t h = 0;
    for (long p = 0; p < passes; p++) {
        memset(table, 0, SLOTS * sizeof *table);
        for (long i = 1; i <= KEYS; i++)
            insert((uint64_t)i * 0x9e3779b97f4a7c15ULL + (uint64_t)p, (uint64_t)i);
        for (long i = 1; i <= 2 * KEYS; i++)
            h = h * 31 + lookup((uint64_t)i * 0x9e3779b97f4a7c15ULL + (uint64_t)p);
    }
    return h;
}
