/* A well-behaved tenant: keeps a secret and answers requests about it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <tmebox.h>

/* The host's API (docs/embedding.md): every answer is reported to the host's audit log. */
TMEBOX_IMPORT void host_audit(uint64_t served, bool matched);

static char *secret;
static size_t secret_len;
static unsigned long served;

/* The host hands the tenant its secret once, at provisioning time. */
int provision(const char *buf, int n)
{
    secret = malloc((size_t)n);
    if (!secret)
        return -1;
    memcpy(secret, buf, (size_t)n);
    secret_len = (size_t)n;
    return 0;
}

/* A request: "does my guess match your secret?"  Answers 1/0, never the secret. */
int handle(const char *req, int n, char *resp, int cap)
{
    served++;
    int match = (size_t)n == secret_len && memcmp(req, secret, secret_len) == 0;
    if (cap > 0)
        resp[0] = match ? 'Y' : 'N';
    host_audit(served, match);
    return (int)served;
}

/* Where the secret lives: as if the attacker had learned it from a crash dump or a log. */
unsigned long secret_address(void)
{
    return (unsigned long)secret;
}
