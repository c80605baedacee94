/* A buggy tenant in the style of Heartbleed (CVE-2014-0160): the heartbeat echoes back
   as many bytes as the request *claims* to contain, reading far past the real payload. */
#include <stdlib.h>
#include <string.h>

static char *payload;

int heartbeat(const char *req, int real_len, char *resp, int claimed_len)
{
    free(payload);
    payload = malloc((size_t)real_len);
    memcpy(payload, req, (size_t)real_len);
    memcpy(resp, payload, (size_t)claimed_len);   /* the bug: claimed_len is not checked */
    return claimed_len;
}

/* Worse than Heartbleed: read any address the attacker names. */
int peek(unsigned long address, char *resp, int n)
{
    memcpy(resp, (const char *)address, (size_t)n);
    return n;
}

/* And write any address: tries to corrupt a neighbour. */
int poke(unsigned long address, const char *data, int n)
{
    memcpy((char *)address, data, (size_t)n);
    return n;
}

/* Crash on purpose: the fault must stay inside this tenant. */
int crash(void)
{
    volatile int *p = (int *)0;
    return *p;
}
