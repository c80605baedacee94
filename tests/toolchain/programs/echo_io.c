/* argv, envp and stdin reach main through the crt; stdout and stderr are separate. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

int main(int argc, char **argv, char **envp)
{
	printf("argc=%d\n", argc);
	for (int i = 1; i < argc; i++)
		printf("argv[%d]=%s\n", i, argv[i]);
	printf("envp==environ: %d\n", envp == environ);
	const char *who = getenv("TMEBOX_WHO");
	printf("TMEBOX_WHO=%s\n", who ? who : "(unset)");
	char line[256];
	int n = 0;
	while (fgets(line, sizeof line, stdin)) {
		for (char *p = line; *p; p++)
			*p = (char)toupper((unsigned char)*p);
		printf("%d:%s", ++n, line);
	}
	fprintf(stderr, "read %d lines\n", n);
	return n == 3 ? 7 : 1;
}
