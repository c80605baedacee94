/* Indirect calls through a table of function pointers, the index depending on
 * the previous result (an interpreter's dispatch). code+data masks each target
 * and pads each call. */
#include <stdint.h>

typedef uint64_t (*op_fn)(uint64_t);

#define OP(name, expr) \
    __attribute__((noinline)) static uint64_t name(uint64_t x) { return (expr); }
OP(op0, x * 3 + 1)
OP(op1, x ^ (x >> 7))
OP(op2, x + 0x9e3779b97f4a7c15ULL)
OP(op3, (x << 5) | (x >> 59))
OP(op4, x * 0xff51afd7ed558ccdULL)
OP(op5, x - (x >> 3))
OP(op6, x ^ 0xc4ceb9fe1a85ec53ULL)
OP(op7, x + (x << 9))
OP(op8, ~x * 5)
OP(op9, x ^ (x << 13))
OP(op10, x + 12345)
OP(op11, (x >> 1) | (x << 63))
OP(op12, x * 7 - 3)
OP(op13, x ^ (x >> 29))
OP(op14, x + (x >> 11) + 1)
OP(op15, x * 0x2545f4914f6cdd1dULL)

static op_fn ops[16] = {op0, op1, op2, op3, op4, op5, op6, op7,
                        op8, op9, op10, op11, op12, op13, op14, op15};
static op_fn *volatile table = ops;  /* keeps gcc from resolving the calls */
static long calls;

int workload_init(long scale)
{
    calls = scale * (1L << 20);
    return 0;
}

unsigned long long workload_run(void)
{
    op_fn *t = table;
    uint64_t x = 1;
    for (long i = 0; i < calls; i++)
        x = t[(x >> 17) & 15](x ^ (uint64_t)i);
    return x;
}
