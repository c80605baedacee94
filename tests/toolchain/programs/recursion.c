/* Deep and mutual recursion: the stack grows well past a page. */
#include <stdio.h>

static long ack(long m, long n)
{
	if (m == 0)
		return n + 1;
	if (n == 0)
		return ack(m - 1, 1);
	return ack(m - 1, ack(m, n - 1));
}

static int is_odd(unsigned n);
static int is_even(unsigned n) { return n == 0 ? 1 : is_odd(n - 1); }
static int is_odd(unsigned n) { return n == 0 ? 0 : is_even(n - 1); }

static unsigned long fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static int depth(int n)
{
	volatile char pad[256];
	pad[0] = (char)n;
	return n == 0 ? pad[0] : depth(n - 1) + 1;
}

int main(void)
{
	printf("ack(2,3)=%ld ack(3,5)=%ld\n", ack(2, 3), ack(3, 5));
	printf("even(10001)=%d odd(7777)=%d\n", is_even(10001), is_odd(7777));
	printf("fib(24)=%lu\n", fib(24));
	printf("depth=%d\n", depth(2000));
	return 0;
}
