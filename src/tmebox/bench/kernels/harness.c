/* The driver every workload is linked with (all three builds).
 *
 * A workload defines workload_init(scale) (build its inputs, not timed) and
 * workload_run() (a fixed amount of work, returning a checksum of its result).
 *
 * - main(argc, argv): `prog [SCALE]` runs once and prints the checksum;
 *   `prog SCALE serve` (the native baseline) answers each byte read from stdin
 *   with a line "WALL_NS CPU_NS CHECKSUM" for one timed run.
 * - bench_init(scale), bench_iter() (returns wall ns), bench_cpu() (CPU ns of
 *   the last run) and bench_checksum() are exported for the sandboxed builds,
 *   which the harness calls through tmebox.Runtime.
 *
 * Both ways time workload_run() in C, wall time with CLOCK_MONOTONIC and CPU
 * time with CLOCK_THREAD_CPUTIME_ID (which does not count the time the thread
 * was descheduled: the figure to trust on a shared machine). The baseline and
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
static long long last_cpu;
static int initialised;

static long long now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
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
    long long c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
    long long t0 = now_ns(CLOCK_MONOTONIC);
    last_checksum = workload_run();
    long long t1 = now_ns(CLOCK_MONOTONIC);
    last_cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    return t1 - t0;
}

long long bench_cpu(void)
{
    return last_cpu;
}

unsigned long long bench_checksum(void)
{
    return last_checksum;
}

static int serve(void)
{
    char c;
    while (read(0, &c, 1) == 1) {
        char line[80];
        long long ns = bench_iter();
        int n = snprintf(line, sizeof line, "%lld %lld %016llx\n", ns, last_cpu, last_checksum);
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
