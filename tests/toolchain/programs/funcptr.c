/* Function pointers: tables, callbacks, pointers passed through memory. */
#include <stdio.h>

typedef long (*op_fn)(long, long);

static long add(long a, long b) { return a + b; }
static long sub(long a, long b) { return a - b; }
static long mul(long a, long b) { return a * b; }
static long maxf(long a, long b) { return a > b ? a : b; }

static const struct {
	const char *name;
	op_fn fn;
} ops[] = {{"add", add}, {"sub", sub}, {"mul", mul}, {"max", maxf}};

static long fold(op_fn f, const long *v, int n)
{
	long acc = v[0];
	for (int i = 1; i < n; i++)
		acc = f(acc, v[i]);
	return acc;
}

struct shape {
	double (*area)(const struct shape *);
	double w, h;
};
static double rect(const struct shape *s) { return s->w * s->h; }
static double tri(const struct shape *s) { return s->w * s->h / 2; }

long apply(op_fn f, long a, long b) { return f(a, b); }

int main(void)
{
	long v[] = {3, 9, -4, 12, 7};
	for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; i++)
		printf("%s=%ld\n", ops[i].name, fold(ops[i].fn, v, 5));
	struct shape shapes[] = {{rect, 3, 4}, {tri, 3, 4}, {rect, 1.5, 2}};
	for (int i = 0; i < 3; i++)
		printf("area=%.2f\n", shapes[i].area(&shapes[i]));
	volatile op_fn indirect = mul;
	printf("apply=%ld %ld\n", apply(indirect, 6, 7), apply(add, 1, 2));
	return 0;
}
