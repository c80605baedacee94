/* String handling: the string.h family, including musl's rep-movs memcpy/memset. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

int main(void)
{
	char buf[256], big[4096], copy[4096];
	strcpy(buf, "The quick brown fox");
	strcat(buf, " jumps over the lazy dog");
	printf("len=%zu\n", strlen(buf));
	printf("strchr=%s\n", strchr(buf, 'q'));
	printf("strrchr=%s\n", strrchr(buf, 'o'));
	printf("strstr=%s\n", strstr(buf, "lazy"));
	printf("strncmp=%d cmp=%d\n", strncmp(buf, "The quick", 9) == 0, strcmp("abc", "abd") < 0);
	char *save, *tok, tmp[64];
	strcpy(tmp, "a,bb,,ccc,d");
	for (tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		printf("tok=%s ", tok);
	printf("\n");
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (char)(i * 7 + 3);
	memcpy(copy, big, sizeof big);
	printf("memcmp=%d\n", memcmp(copy, big, sizeof big));
	memmove(copy + 1, copy, sizeof copy - 1);
	printf("memmove=%d %d\n", copy[1] == big[0], copy[4095] == big[4094]);
	memset(copy, 'x', 1000);
	printf("memset=%d %d\n", copy[999] == 'x', copy[1000] == big[999]);
	char *dup = strdup(buf);
	for (char *p = dup; *p; p++)
		*p = (char)toupper((unsigned char)*p);
	printf("upper=%s\n", dup);
	free(dup);
	printf("strspn=%zu strcspn=%zu\n", strspn("aaabbc", "ab"), strcspn("hello world", " "));
	char num[32];
	snprintf(num, sizeof num, "%ld", strtol("  -12345xyz", NULL, 10));
	printf("strtol=%s strtoul=%lu\n", num, strtoul("ff", NULL, 16));
	return 0;
}
