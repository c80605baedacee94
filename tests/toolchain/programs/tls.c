/* Thread-local storage: musl's static TLS set-up finds the PT_TLS image. */
#include <stdio.h>

static _Thread_local int counter = 40;
_Thread_local char tbuf[64];

int bump(void) { return ++counter; }

int main(void)
{
	bump();
	bump();
	tbuf[0] = 'o';
	tbuf[1] = 'k';
	printf("counter=%d tbuf=%s\n", counter, tbuf);
	return 0;
}
