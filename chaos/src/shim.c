/* hookrelay-chaos LD_PRELOAD shim: shifts the wall clock and delays fsync/fdatasync of the
 * process it is preloaded into, under the control of a small shared file the suite writes.
 *
 * Control file (path in HOOKRELAY_CHAOS_SHIM_CONTROL), little-endian int64 slots:
 *   [0] wall-clock offset in nanoseconds (CLOCK_REALTIME*, gettimeofday, time)
 *   [1] delay added before every fsync/fdatasync, in microseconds
 *   [2] fsync/fdatasync calls seen (the shim increments it)
 * CLOCK_MONOTONIC is never shifted: a wall-clock jump must not move monotonic timers.
 * Only calls that go through libc are affected: io_uring fsyncs bypass it (slow-disk runs the
 * log on its portable pwrite + fdatasync backend for that reason). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t *ctl;
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void resolve(void) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    if (!real_gettimeofday) real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
    if (!real_fsync) real_fsync = dlsym(RTLD_NEXT, "fsync");
    if (!real_fdatasync) real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
}

__attribute__((constructor)) static void chaos_shim_init(void) {
    resolve();
    const char *path = getenv("HOOKRELAY_CHAOS_SHIM_CONTROL");
    if (!path) return;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return;
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) ctl = (volatile int64_t *)p;
}

static int64_t offset_ns(void) { return ctl ? ctl[0] : 0; }

int clock_gettime(clockid_t clk, struct timespec *ts) {
    resolve();
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && ts && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        int64_t off = offset_ns();
        if (off) {
            int64_t ns = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec + off;
            ts->tv_sec = ns / 1000000000LL;
            ts->tv_nsec = ns % 1000000000LL;
            if (ts->tv_nsec < 0) { ts->tv_nsec += 1000000000LL; ts->tv_sec -= 1; }
        }
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    resolve();
    int rc = real_gettimeofday(tv, tz);
    if (rc == 0 && tv) {
        int64_t off_us = offset_ns() / 1000;
        if (off_us) {
            int64_t us = (int64_t)tv->tv_sec * 1000000LL + tv->tv_usec + off_us;
            tv->tv_sec = us / 1000000LL;
            tv->tv_usec = us % 1000000LL;
            if (tv->tv_usec < 0) { tv->tv_usec += 1000000LL; tv->tv_sec -= 1; }
        }
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

static void delay_and_count(void) {
    if (!ctl) return;
    __atomic_fetch_add((int64_t *)&ctl[2], 1, __ATOMIC_RELAXED);
    int64_t us = ctl[1];
    if (us > 0) {
        struct timespec d = { us / 1000000LL, (us % 1000000LL) * 1000LL };
        nanosleep(&d, NULL);
    }
}

int fsync(int fd) { resolve(); delay_and_count(); return real_fsync(fd); }
int fdatasync(int fd) { resolve(); delay_and_count(); return real_fdatasync(fd); }
