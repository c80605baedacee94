/* Runtime calls serviced in C: the common I/O calls on descriptors that are plain host
 * descriptors, fstat on open files, clock_gettime and getrandom, without going back to
 * Python.
 *
 * tmebox.runtime.syscalls is the specification: the same checks in the same order, the
 * same results (tests/runtime/test_direct_calls.py runs every case both ways). Whatever
 * this file is not sure of, it leaves to Python (returns 0): a descriptor the table does
 * not mark, reads of the host's stdin (which deadlines and interrupt() must be able to
 * end), the streams given as Python objects, and every other call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "tmebox_native.h"

#define IO_CHUNK (1ull << 20) /* syscalls.IO_CHUNK */
#define IOV_MAX_ 1024         /* syscalls.IOV_MAX */

enum { SYS_read_ = 0, SYS_write_ = 1, SYS_fstat_ = 5, SYS_lseek_ = 8, SYS_pread64_ = 17,
       SYS_pwrite64_ = 18, SYS_readv_ = 19, SYS_writev_ = 20, SYS_clock_gettime_ = 228,
       SYS_getrandom_ = 318 };
_Static_assert(sizeof(struct stat) == 144, "x86-64 Linux struct stat (files._STAT)");

/* SandboxMemory.ok: window offsets [read_lo, hi) readable, [write_lo, hi) writable */
static int mem_ok(const struct tmebox_direct *d, uint64_t addr, uint64_t n, int write)
{
    uint64_t off = (uint32_t)addr;
    return off >= (write ? d->write_lo : d->read_lo) && off + n <= d->hi;
}

static const struct tmebox_fd *fd_of(const struct tmebox_direct *d, uint64_t fd)
{
    return fd < d->nfds && d->fds[fd].host >= 0 ? &d->fds[fd] : NULL;
}

/* syscalls._iovecs and _clip: the guest's iovecs as host ones, at most IO_CHUNK in all */
static int64_t iovecs(const struct tmebox_ctx *c, const struct tmebox_direct *d,
                      uint64_t iov, uint64_t count, int write, struct iovec *out, int *n_out)
{
    if (count >> 31 || count > IOV_MAX_)
        return -EINVAL;
    if (!mem_ok(d, iov, 16 * count, 0))
        return -EFAULT;
    const uint64_t *raw = (const uint64_t *)(c->base + (uint32_t)iov);
    for (uint64_t i = 0; i < count; i++)
        if (raw[2 * i + 1] >> 63)
            return -EINVAL;
    for (uint64_t i = 0; i < count; i++) /* _read/_write: every buffer before any byte */
        if (raw[2 * i + 1] && !mem_ok(d, raw[2 * i], raw[2 * i + 1], write))
            return -EFAULT;
    uint64_t room = IO_CHUNK;
    int n = 0;
    for (uint64_t i = 0; i < count && room; i++) {
        uint64_t len = raw[2 * i + 1] < room ? raw[2 * i + 1] : room;
        room -= len;
        if (!len)
            continue;
        out[n].iov_base = (void *)(c->base + (uint32_t)raw[2 * i]);
        out[n].iov_len = len;
        n++;
    }
    *n_out = n;
    return 0;
}

static int64_t err(void) { return errno == EXDEV ? -EACCES : -errno; }

/* Sink.write to a host descriptor: everything, a short write continues. A signal (Ctrl-C)
   that stops a write before its first byte gives the call back to Python (-EINTR: see
   direct()), whose signal handlers run there; after some bytes, the count. */
static int64_t write_all(int fd, struct iovec *v, int n)
{
    int64_t total = 0;
    while (n) {
        ssize_t w = writev(fd, v, n);
        if (w < 0)
            return errno == EINTR && total ? total : -errno;
        total += w;
        while (n && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    return total;
}

static int64_t rw(const struct tmebox_fd *f, int write, struct iovec *v, int n)
{
    if (!n)
        return 0;
    if (write && f->whole)
        return write_all(f->host, v, n);
    ssize_t r = write ? writev(f->host, v, n) : readv(f->host, v, n);
    return r < 0 ? err() : r;
}

/* The descriptor a read or write goes to in C, or NULL (Python's call). A call that holds
   the GIL (preemptible) must not wait in a write to a pipe or a terminal: those streams
   go back to Python, which lets the GIL go while it waits. */
static const struct tmebox_fd *io_fd(const struct tmebox_ctx *c,
                                     const struct tmebox_direct *d, uint64_t fd, int write)
{
    const struct tmebox_fd *f = fd_of(d, fd);
    if (!f || !(write ? f->writable : f->readable) || (f->whole && c->preemptible))
        return NULL;
    return f;
}

static const clockid_t clocks[8] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID,
                                    CLOCK_THREAD_CPUTIME_ID, CLOCK_MONOTONIC_RAW,
                                    CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME};

/* The pending runtime call, if this file services it: 1 and its result, else 0. */
static int direct(const struct tmebox_ctx *c, const struct tmebox_direct *d, int64_t *res)
{
    uint64_t nr = c->gpr[TMEBOX_RAX], a0 = c->gpr[TMEBOX_RDI], a1 = c->gpr[TMEBOX_RSI];
    uint64_t a2 = c->gpr[TMEBOX_RDX], a3 = c->gpr[TMEBOX_R10];
    struct iovec v[IOV_MAX_];
    int n = 0;
    const struct tmebox_fd *f;
    switch (nr) {
    case SYS_write_:
    case SYS_read_: {
        int write = nr == SYS_write_;
        if (!(f = io_fd(c, d, a0, write)))
            return 0;
        if (a2 >> 63) {
            *res = -EINVAL;
            return 1;
        }
        if (a2 && !mem_ok(d, a1, a2, !write)) {
            *res = -EFAULT;
            return 1;
        }
        v[0].iov_base = (void *)(c->base + (uint32_t)a1);
        v[0].iov_len = a2 < IO_CHUNK ? a2 : IO_CHUNK;
        *res = rw(f, write, v, a2 ? 1 : 0);
        return *res != -EINTR; /* interrupted before any byte: Python does it again */
    }
    case SYS_writev_:
    case SYS_readv_: {
        int write = nr == SYS_writev_;
        if (!(f = io_fd(c, d, a0, write)))
            return 0;
        int64_t e = iovecs(c, d, a1, a2 >> 31 ? UINT64_MAX : a2, !write, v, &n);
        *res = e ? e : rw(f, write, v, n);
        return *res != -EINTR;
    }
    case SYS_pread64_:
    case SYS_pwrite64_: {
        int write = nr == SYS_pwrite64_;
        if (!(f = fd_of(d, a0)) || !f->seekable)
            return 0;
        if (a2 >> 63 || a3 >> 63) {
            *res = -EINVAL;
            return 1;
        }
        uint64_t len = a2 < IO_CHUNK ? a2 : IO_CHUNK;
        if (!mem_ok(d, a1, len, !write)) {
            *res = -EFAULT;
            return 1;
        }
        void *at = (void *)(c->base + (uint32_t)a1);
        ssize_t r = write ? pwrite(f->host, at, len, (off_t)a3)
                          : pread(f->host, at, len, (off_t)a3);
        *res = r < 0 ? err() : r;
        return 1;
    }
    case SYS_lseek_: {
        if (!(f = fd_of(d, a0)) || !f->seekable)
            return 0;
        off_t r = lseek(f->host, (off_t)a1, (int)(int32_t)a2);
        *res = r < 0 ? err() : r;
        return 1;
    }
    case SYS_fstat_: { /* files._fstat, on an open file (a stream's is made up in Python) */
        struct stat st;
        if (!(f = fd_of(d, a0)) || !f->seekable)
            return 0;
        if (fstat(f->host, &st) != 0) {
            *res = err();
            return 1;
        }
        if (!mem_ok(d, a1, sizeof st, 1)) {
            *res = -EFAULT;
            return 1;
        }
        memcpy((void *)(c->base + (uint32_t)a1), &st, sizeof st);
        *res = 0;
        return 1;
    }
    case SYS_getrandom_: { /* _sys_getrandom: at most IO_CHUNK bytes, flags ignored */
        uint64_t len = a1 < IO_CHUNK ? a1 : IO_CHUNK;
        if (!mem_ok(d, a0, len, 1)) {
            *res = -EFAULT;
            return 1;
        }
        char *at = (char *)(c->base + (uint32_t)a0);
        for (uint64_t got = 0; got < len;) {
            ssize_t r = getrandom(at + got, len - got, 0);
            if (r < 0 && errno != EINTR)
                return 0; /* let Python say what happened */
            got += r > 0 ? (uint64_t)r : 0;
        }
        *res = (int64_t)len;
        return 1;
    }
    case SYS_clock_gettime_: {
        if (a0 >= 8) {
            *res = -EINVAL;
            return 1;
        }
        if (!mem_ok(d, a1, 16, 1)) {
            *res = -EFAULT;
            return 1;
        }
        struct timespec ts;
        clock_gettime(clocks[a0], &ts);
        int64_t *out = (int64_t *)(c->base + (uint32_t)a1);
        out[0] = ts.tv_sec;
        out[1] = ts.tv_nsec;
        *res = 0;
        return 1;
    }
    }
    return 0;
}

int tmebox_direct_call(const struct tmebox_ctx *c, int64_t *result)
{
    return c->direct ? direct(c, c->direct, result) : 0;
}
