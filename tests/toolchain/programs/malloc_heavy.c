/* Heap stress: many sizes, realloc chains, frees in a scrambled order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 4000

int main(void)
{
	static char *p[N];
	static size_t sz[N];
	unsigned long seed = 12345, sum = 0;
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < N; i++) {
			seed = seed * 6364136223846793005UL + 1442695040888963407UL;
			sz[i] = (seed >> 33) % (i % 50 == 0 ? 200000 : 300) + 1;
			p[i] = malloc(sz[i]);
			if (!p[i]) {
				printf("malloc failed\n");
				return 1;
			}
			memset(p[i], i & 0xff, sz[i]);
		}
		for (int i = 0; i < N; i += 3) {
			size_t nsz = sz[i] * 2 + 17;
			char *q = realloc(p[i], nsz);
			if (!q) {
				printf("realloc failed\n");
				return 1;
			}
			memset(q + sz[i], (i + 1) & 0xff, nsz - sz[i]);
			p[i] = q;
			sz[i] = nsz;
		}
		for (int k = 0; k < N; k++) {
			int i = (k * 7919) % N;
			sum += (unsigned char)p[i][sz[i] - 1] + (unsigned char)p[i][0];
			free(p[i]);
		}
	}
	int *c = calloc(1000, sizeof *c);
	for (int i = 0; i < 1000; i++)
		sum += c[i];
	free(c);
	printf("checksum=%lu\n", sum);
	return 0;
}
