/* The smallest useful tenant: for switch cost (noop is one host -> sandbox ->
 * host round trip) and density (a sandbox with musl initialised). */
long noop(long x)
{
    return x + 1;
}

int main(void)
{
    return 0;
}
