/* qsort and bsearch with comparison callbacks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
	enum { N = 20000 };
	static int v[N];
	unsigned seed = 7;
	for (int i = 0; i < N; i++) {
		seed = seed * 1103515245u + 12345u;
		v[i] = (int)(seed >> 8) % 100000 - 50000;
	}
	qsort(v, N, sizeof v[0], cmp_int);
	int sorted = 1;
	long sum = 0;
	for (int i = 1; i < N; i++)
		sorted &= v[i - 1] <= v[i];
	for (int i = 0; i < N; i += 1000)
		sum += v[i];
	printf("sorted=%d min=%d max=%d sample=%ld\n", sorted, v[0], v[N - 1], sum);
	int key = v[1234];
	int *hit = bsearch(&key, v, N, sizeof v[0], cmp_int);
	printf("bsearch=%d\n", hit && *hit == key);
	char *words[] = {"pear", "apple", "fig", "banana", "cherry", "date"};
	qsort(words, 6, sizeof words[0], cmp_str);
	for (int i = 0; i < 6; i++)
		printf("%s ", words[i]);
	printf("\n");
	return 0;
}
