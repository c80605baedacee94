/* printf: every conversion, flags, widths, precisions and length modifiers. */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <wchar.h>

int main(void)
{
	int n = 0;
	printf("d=%d i=%i neg=%d wide=[%8d] left=[%-8d] zero=[%08d] plus=%+d space=[% d]\n", 42, -7,
	       -2147483647 - 1, 123, 123, 123, 5, 5);
	printf("u=%u o=%o x=%x X=%X alt=%#o %#x %#X\n", 4000000000u, 8, 255, 255, 8, 255, 255);
	printf("hh=%hhd h=%hd l=%ld ll=%lld j=%jd z=%zu t=%td\n", (signed char)-1, (short)-2,
	       -3L, -4LL, (intmax_t)-5, (size_t)6, (ptrdiff_t)-7);
	printf("llu=%llu llx=%llx PRIx64=%" PRIx64 "\n", 18446744073709551615ULL,
	       0xdeadbeefcafebabeULL, (uint64_t)0x1234);
	printf("f=%f e=%e E=%E g=%g G=%G a=%a A=%A\n", 3.14159, 31415.9, 0.000314, 0.0001234,
	       1e20, 1.0, -0.5);
	printf("prec=%.3f %.0f %#.0f %10.4f %-10.2e| %.10g\n", 2.0 / 3, 2.5, 2.0, -1.5, 12345.678,
	       1.0 / 3);
	printf("Lf=%Lf Le=%.3Le\n", 1.5L, 12345.678L);
	printf("inf=%f -inf=%F nan=%f\n", 1.0 / 0.0, -1.0 / 0.0, 0.0 / 0.0);
	printf("c=%c s=%s prec=%.3s width=[%6s] [%-6s]\n", 'A', "string", "abcdef", "ab", "ab");
	printf("lc=%lc ls=%ls\n", (wint_t)L'w', L"wide");
	printf("p=%s null=%p\n", (void *)&n != NULL ? "set" : "null", (void *)0);
	printf("star=[%*d] [%-*d] [%.*f]\n", 6, 42, 6, 42, 2, 3.14159);
	printf("pct=%% n:%n|\n", &n);
	printf("n=%d\n", n);
	char buf[64];
	int len = snprintf(buf, 10, "%s", "truncated output");
	printf("snprintf=%s len=%d\n", buf, len);
	printf("positional=%2$s %1$s\n", "world", "hello");
	return 0;
}
