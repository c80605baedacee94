/* Host-side reference points for the switch-cost comparison (built with the
 * system compiler, not sandboxed):
 *   switch_host proc   N CPU   two processes ping-ponging one byte over two pipes
 *   switch_host thread N CPU   two threads, same over two pipes
 *   switch_host cond   N CPU   two threads ping-ponging on a mutex + condition variables
 * CPU >= 0 pins both sides to that CPU (every round trip is then two real
 * context switches); CPU < 0 leaves them to the scheduler (cross-core wake-ups).
 * Prints the nanoseconds per round trip (the median of 5 batches of N). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long iters;
static int cpu;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pin(void)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("sched_setaffinity");
        exit(1);
    }
}

static void echo_loop(int in, int out, long n)
{
    char c;
    for (long i = 0; i < n; i++)
        if (read(in, &c, 1) != 1 || write(out, &c, 1) != 1)
            exit(1);
}

static long long ping_loop(int in, int out, long n)
{
    char c = 'x';
    long long t0 = now_ns();
    for (long i = 0; i < n; i++)
        if (write(out, &c, 1) != 1 || read(in, &c, 1) != 1)
            exit(1);
    return now_ns() - t0;
}

static int p2c[2], c2p[2];

static void *thread_echo(void *arg)
{
    long n = *(long *)arg;
    pin();
    echo_loop(p2c[0], c2p[1], n);
    return NULL;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_ping = PTHREAD_COND_INITIALIZER, cv_pong = PTHREAD_COND_INITIALIZER;
static long turn;  /* even: ping's turn, odd: pong's */

static void *cond_echo(void *arg)
{
    long n = *(long *)arg;
    pin();
    pthread_mutex_lock(&mu);
    for (long i = 0; i < n; i++) {
        while (!(turn & 1))
            pthread_cond_wait(&cv_pong, &mu);
        turn++;
        pthread_cond_signal(&cv_ping);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static long long cond_batch(long n)
{
    pthread_t t;
    turn = 0;
    pthread_create(&t, NULL, cond_echo, &n);
    long long t0 = now_ns();
    pthread_mutex_lock(&mu);
    for (long i = 0; i < n; i++) {
        turn++;
        pthread_cond_signal(&cv_pong);
        while (turn & 1)
            pthread_cond_wait(&cv_ping, &mu);
    }
    pthread_mutex_unlock(&mu);
    long long dt = now_ns() - t0;
    pthread_join(t, NULL);
    return dt;
}

static long long batch(const char *mode, long n)
{
    if (strcmp(mode, "cond") == 0)
        return cond_batch(n);
    if (pipe(p2c) != 0 || pipe(c2p) != 0) {
        perror("pipe");
        exit(1);
    }
    long long dt;
    if (strcmp(mode, "proc") == 0) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(1);
        }
        if (pid == 0) {
            echo_loop(p2c[0], c2p[1], n);
            _exit(0);
        }
        dt = ping_loop(c2p[0], p2c[1], n);
        waitpid(pid, NULL, 0);
    } else {
        pthread_t t;
        pthread_create(&t, NULL, thread_echo, &n);
        dt = ping_loop(c2p[0], p2c[1], n);
        pthread_join(t, NULL);
    }
    close(p2c[0]);
    close(p2c[1]);
    close(c2p[0]);
    close(c2p[1]);
    return dt;
}

static int cmp(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "proc") && strcmp(argv[1], "thread") &&
                      strcmp(argv[1], "cond"))) {
        fprintf(stderr, "usage: %s proc|thread|cond N CPU\n", argv[0]);
        return 2;
    }
    iters = atol(argv[2]);
    cpu = atoi(argv[3]);
    if (iters < 1) {
        fprintf(stderr, "%s: N must be positive\n", argv[0]);
        return 2;
    }
    pin();
    long long per[5];
    batch(argv[1], iters / 10 + 1);  /* warm-up */
    for (int i = 0; i < 5; i++)
        per[i] = batch(argv[1], iters);
    qsort(per, 5, sizeof per[0], cmp);
    printf("%.1f\n", (double)per[2] / (double)iters);
    return 0;
}
