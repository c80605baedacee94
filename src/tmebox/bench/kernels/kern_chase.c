/* Pointer chasing: a singly linked list in shuffled order, walked end to end.
 * Every load depends on the previous one, so the address generation of the
 * instrumented %gs:(%eREG) operands sits on the critical path.
 * 32 Ki nodes of 16 bytes = 512 KiB: resident in a 1 MiB L2 with room to spare,
 * so the cost shows rather than hiding behind L3 misses whose number depends on
 * where the pages landed (a 1 MiB list swung by +-8 % between runs). */
#include <stdint.h>
#include <stdlib.h>

struct node {
    struct node *next;
    uint64_t val;
};

#define NODES (1L << 15)

static struct node *nodes;
static long steps;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t xorshift(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int workload_init(long scale)
{
    long *perm = malloc(NODES * sizeof *perm);
    nodes = malloc(NODES * sizeof *nodes);
    if (!perm || !nodes)
        return -1;
    for (long i = 0; i < NODES; i++)
        perm[i] = i;
    for (long i = NODES - 1; i > 0; i--) {
        long j = (long)(xorshift() % (uint64_t)(i + 1));
        long t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (long i = 0; i < NODES; i++) {
        nodes[perm[i]].next = &nodes[perm[(i + 1) % NODES]];
        nodes[perm[i]].val = (uint64_t)i * 2654435761u;
    }
    free(perm);
    steps = scale * NODES;
    return 0;
}

unsigned long long workload_run(void)
{
    const struct node *p = &nodes[0];
    uint64_t sum = 0;
    for (long i = 0; i < steps; i++) {
        sum = sum * 31 + p->val;
        p = p->next;
    }
    return sum;
}
