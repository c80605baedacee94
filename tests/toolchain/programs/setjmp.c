/* setjmp/longjmp (tmebox's own, without %r14) and sigsetjmp/siglongjmp. */
#include <setjmp.h>
#include <stdio.h>

static jmp_buf env;
static sigjmp_buf senv;
static int depth;

static void dive(int n)
{
	volatile char pad[512];
	pad[0] = (char)n;
	depth++;
	if (n == 0)
		longjmp(env, 42);
	dive(n - 1);
	pad[1] = 0;
}

int main(void)
{
	volatile int visits = 0;
	volatile long keep = 1234567;
	int r = setjmp(env);
	visits++;
	if (r == 0)
		dive(100);
	printf("r=%d visits=%d depth=%d keep=%ld\n", r, visits, depth, keep);
	r = setjmp(env);
	if (r == 0)
		longjmp(env, 0);
	printf("longjmp(0) gives %d\n", r);
	int s = sigsetjmp(senv, 1);
	if (s < 3) {
		printf("sigsetjmp=%d\n", s);
		siglongjmp(senv, s + 1);
	}
	printf("done s=%d\n", s);
	return 0;
}
