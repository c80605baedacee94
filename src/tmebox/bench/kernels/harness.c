/* The driver every workload is linked with (all three builds).
 *
 * A workload defines workload_init(scale) (build its inputs, not timed) and
 * workload_run() (a fixed amount of work, returning a checksum of its result).
 *
 * - main(argc, argv): `prog [SCALE]` runs once and prints the checksum;
 *   `prog SCALE serve` (the native baseline) answers each byte read from stdin
 *   with a line "NANOSECONDS CHECKSUM" for one timed run.
 * - bench_init(scale), bench_iter(), bench_checksum() are exported for the
 *   sandboxed builds, which the harness calls through tmebox.Runtime.
 *
 * Both ways time workload_run() in C with CLOCK_MONOTONIC, so the baseline and
 * the sandboxes are measured by the same code; only the few microseconds of a
 * runtime call at either end of a sandbox's run differ.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int workload_init(long scale);
unsigned long long workload_run(void);

static unsigned long long last_checksum;
static int initialised;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

long long bench_init(long scale)
{
    if (initialised)
        return 0;
    if (workload_init(scale) != 0)
        return -1;
    initialised = 1;
    return 0;
}

long long bench_iter(void)
{
    long long t0 = now_ns();
    last_checksum = workload_run();
    return now_ns() - t0;
}

unsigned long long bench_checksum(void)
{
    return last_checksum;
}

static int serve(void)
{
    char c;
    while (read(0, &c, 1) == 1) {
        char line[64];
        long long ns = bench_iter();
        int n = snprintf(line, sizeof line, "%lld %016llx\n", ns, last_checksum);
        if (write(1, line, (size_t)n) != n)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    long scale = argc > 1 ? atol(argv[1]) : 1;
    if (scale < 1) {
        fprintf(stderr, "%s: scale must be a positive integer\n", argv[0]);
        return 2;
    }
    if (bench_init(scale) != 0) {
        fprintf(stderr, "%s: workload_init(%ld) failed\n", argv[0], scale);
        return 1;
    }
    if (argc > 2 && strcmp(argv[2], "serve") == 0)
        return serve();
    bench_iter();
    printf("checksum %016llx\n", last_checksum);
    return 0;
}
