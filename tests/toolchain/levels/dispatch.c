/* Runtime CPU dispatch as zstd and libdeflate do it: a target("avx2") variant chosen by
 * cpuid (and __builtin_cpu_supports), next to a portable one. */
#include <stdio.h>
#include <immintrin.h>

__attribute__((target("avx2"))) static long sum_avx2(const int *p, int n)
{
	__m256i acc = _mm256_setzero_si256();
	for (int i = 0; i + 8 <= n; i += 8)
		acc = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)(p + i)));
	int lanes[8];
	_mm256_storeu_si256((__m256i *)lanes, acc);
	long s = 0;
	for (int i = 0; i < 8; i++)
		s += lanes[i];
	return s;
}

__attribute__((target("sse4.2"))) static unsigned crc(const char *s)
{
	unsigned c = 0;
	while (*s)
		c = _mm_crc32_u8(c, (unsigned char)*s++);
	return c;
}

static unsigned crc_plain(const char *s)
{
	unsigned c = 0;
	while (*s) {
		c ^= (unsigned char)*s++;
		for (int k = 0; k < 8; k++)
			c = c >> 1 ^ (0x82F63B78u & -(c & 1));
	}
	return c;
}

static long sum_plain(const int *p, int n)
{
	long s = 0;
	for (int i = 0; i < n; i++)
		s += p[i];
	return s;
}

static void cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
	__asm__("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

int main(void)
{
	static int a[64];
	unsigned r1[4], r7[4], r81[4];
	for (int i = 0; i < 64; i++)
		a[i] = i * 3 - 7;
	cpuid(1, 0, r1);
	cpuid(7, 0, r7);
	cpuid(0x80000001, 0, r81);
	int avx2 = __builtin_cpu_supports("avx2");
	int sse42 = __builtin_cpu_supports("sse4.2");
	printf("cpuid: sse3=%u sse4.2=%u popcnt=%u avx=%u fma=%u avx2=%u bmi2=%u lahf=%u "
	       "avx512f=%u\n", r1[2] & 1, r1[2] >> 20 & 1, r1[2] >> 23 & 1, r1[2] >> 28 & 1,
	       r1[2] >> 12 & 1, r7[1] >> 5 & 1, r7[1] >> 8 & 1, r81[2] & 1, r7[1] >> 16 & 1);
	printf("builtin: sse4.2=%d avx2=%d v2=%d v3=%d\n", !!sse42, !!avx2,
	       !!__builtin_cpu_supports("x86-64-v2"), !!__builtin_cpu_supports("x86-64-v3"));
	printf("sum=%ld crc=%u\n", avx2 ? sum_avx2(a, 64) : sum_plain(a, 64),
	       sse42 ? crc("tmebox") : crc_plain("tmebox"));
	return 0;
}
