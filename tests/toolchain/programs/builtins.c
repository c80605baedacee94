/* Operations gcc hands to libgcc routines: 128-bit division, popcount without
 * POPCNT, powi, complex multiply and divide (the sandbox libc's own versions). */
#include <complex.h>
#include <stdio.h>

static void print_u128(unsigned __int128 v)
{
	char buf[48], *p = buf + sizeof buf - 1;
	*p = 0;
	do {
		*--p = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v);
	printf("%s", p);
}

int main(void)
{
	volatile unsigned __int128 a = ((unsigned __int128)0x0123456789abcdefULL << 64) | 0xfedcba9876543210ULL;
	volatile unsigned __int128 b = ((unsigned __int128)3 << 64) | 7;
	volatile __int128 s = -(__int128)a / 3;
	volatile unsigned long long small = 0x8000000000000001ULL;
	printf("a/b=");
	print_u128(a / b);
	printf(" a%%b=");
	print_u128(a % b);
	printf(" a/1000=");
	print_u128(a / 1000);
	printf("\ns/7=%lld s%%7=%lld\n", (long long)(s / 7 >> 64), (long long)(s % 7));
	printf("popcount=%d %d %d\n", __builtin_popcountll(small), __builtin_popcount(0xf0f0u),
	       __builtin_popcountll(~0ULL));
	volatile double x = 1.5;
	volatile int n = 7;
	printf("powi=%.10g %.10g\n", __builtin_powi(x, n), __builtin_powi(x, -n));
	volatile double re = 1.0, im = -2.0;
	double complex z = re + im * I, w = (re + 3) + (im * 0.5) * I;
	double complex m = z * w, d = z / w;
	printf("mul=%.6f%+.6fi div=%.6f%+.6fi\n", creal(m), cimag(m), creal(d), cimag(d));
	float complex fz = (float)re + (float)im * I;
	float complex fm = fz * fz, fd = fz / (fz + 1.0f);
	printf("fmul=%.4f%+.4fi fdiv=%.4f%+.4fi\n", crealf(fm), cimagf(fm), crealf(fd), cimagf(fd));
	return 0;
}
