/*
 * test_pool.c -- the CPU runtime's thread pool (natten_parallel_for):
 *   - every item of [0, n) runs exactly once, in chunks of at most `grain`,
 *     with tid < nthreads, and all of them have run when the call returns,
 *     also when a worker is still inside a slow chunk as the caller runs out
 *     of work (the caller waits for the workers that joined, and only those);
 *   - back-to-back regions (workers still polling) and regions after an idle
 *     gap longer than the poll (workers asleep) alike;
 *   - nested calls run serially in the caller; two threads calling at once
 *     both finish (one runs its region serially);
 *   - resizing the pool between calls, and fork(): the child's calls finish.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cpu/cpu_internal.h"
#include "support.h"

#define NMAX 4096

typedef struct job {
    _Atomic int count[NMAX];
    _Atomic int bad_tid, bad_chunk, nested_bad;
    int nthreads;
    int64_t grain;
    int slow_every; /* chunks whose begin % slow_every == 0 sleep 200 us (0: none) */
    int nest;       /* run a nested region inside each chunk */
} job;

static void sleep_us(long us) {
    struct timespec t = {0, us * 1000};
    nanosleep(&t, NULL);
}

static void nested_fn(void *ctx, int64_t b, int64_t e, int tid) {
    job *j = ctx;
    (void)b;
    (void)e;
    if (tid != 0) atomic_fetch_add(&j->nested_bad, 1);
}

static void item_fn(void *ctx, int64_t b, int64_t e, int tid) {
    job *j = ctx;
    if (tid < 0 || tid >= j->nthreads) atomic_fetch_add(&j->bad_tid, 1);
    if (e <= b || e - b > j->grain) atomic_fetch_add(&j->bad_chunk, 1);
    if (j->slow_every && b % j->slow_every == 0) sleep_us(200);
    if (j->nest) natten_parallel_for(j->nthreads, 4, 1, nested_fn, j);
    for (int64_t i = b; i < e; ++i) atomic_fetch_add(&j->count[i], 1);
}

/* One region; returns 1 when every item ran exactly once before the return. */
static int run_region(int nthreads, int64_t n, int64_t grain, int slow_every, int nest) {
    static job j;
    memset(&j, 0, sizeof j);
    j.nthreads = nthreads;
    j.grain = grain;
    j.slow_every = slow_every;
    j.nest = nest;
    natten_parallel_for(nthreads, n, grain, item_fn, &j);
    int ok = atomic_load(&j.bad_tid) == 0 && atomic_load(&j.bad_chunk) == 0 &&
             atomic_load(&j.nested_bad) == 0;
    for (int64_t i = 0; i < n; ++i) ok = ok && atomic_load(&j.count[i]) == 1;
    return ok;
}

static void check_sizes(int pool, const char *what) {
    natten_num_threads_set(pool);
    static const int64_t ns[] = {1, 2, 3, 7, 64, 257, 1000, NMAX};
    static const int64_t grains[] = {1, 3, 64};
    int fails = 0, runs = 0;
    for (int gap = 0; gap < 2; ++gap)
        for (size_t a = 0; a < sizeof ns / sizeof ns[0]; ++a)
            for (size_t b = 0; b < sizeof grains / sizeof grains[0]; ++b) {
                if (gap) sleep_us(120); /* past the workers' poll: they sleep */
                const int nt = natten_parallel_threads();
                fails += !run_region(nt, ns[a], grains[b], 0, 0);
                fails += !run_region(nt, ns[a], grains[b], 5, 0);
                runs += 2;
            }
    t_check(fails == 0, "%s: pool of %d, %d of %d regions lost or repeated items", what, pool,
            fails, runs);
}

static void *concurrent_caller(void *arg) {
    int *ok = arg;
    for (int r = 0; r < 50; ++r) *ok &= run_region(natten_parallel_threads(), 300, 1, 7, 0);
    return NULL;
}

int main(void) {
    for (int pool = 1; pool <= 4; ++pool) check_sizes(pool, "sizes");
    check_sizes(3, "after shrinking");

    natten_num_threads_set(3);
    int ok = 1;
    for (int r = 0; r < 20; ++r) ok &= run_region(3, 64, 2, 0, 1);
    t_check(ok, "nested regions run serially in the calling thread");

    /* nthreads below the pool size: the extra workers stay out */
    ok = 1;
    for (int r = 0; r < 50; ++r) ok &= run_region(2, 500, 1, 9, 0);
    t_check(ok, "a job for 2 threads on a pool of 3");

    /* two callers at once: the thread uses run_region's job, this one j2 */
    {
        int ok1 = 1;
        pthread_t th;
        t_check(pthread_create(&th, NULL, concurrent_caller, &ok1) == 0, "pthread_create");
        static job j2;
        int ok2 = 1;
        for (int r = 0; r < 50; ++r) {
            memset(&j2, 0, sizeof j2);
            j2.nthreads = natten_parallel_threads();
            j2.grain = 1;
            natten_parallel_for(j2.nthreads, 300, 1, item_fn, &j2);
            for (int i = 0; i < 300; ++i) ok2 &= atomic_load(&j2.count[i]) == 1;
        }
        pthread_join(th, NULL);
        t_check(ok1 && ok2, "two threads calling at once both finish every item");
    }

    /* fork: the child has no workers and must not wait for the parent's */
    {
        natten_num_threads_set(2);
        t_check(run_region(2, 100, 1, 0, 0), "region before fork");
        fflush(stdout);
        fflush(stderr);
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(60); /* a hang becomes a failure */
            int good = 1;
            for (int r = 0; r < 20; ++r) good &= run_region(2, 100, 1, 3, 0);
            _exit(good ? 0 : 1);
        }
        int status = -1;
        t_check(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
                    WEXITSTATUS(status) == 0,
                "regions in a forked child (status %d)", status);
    }
    return t_summary("test_pool");
}
