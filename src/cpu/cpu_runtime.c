/*
 * cpu_runtime.c -- CPU runtime of the fast kernels: ISA detection (once,
 * pthread_once), the registry of per-ISA microkernels with the NATTEN_CPU_ISA
 * override, and the library's thread pool (NATTEN_NUM_THREADS or
 * natten_num_threads_set, default = online cores).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#if defined(NATTEN_HAVE_X86)
#include <cpuid.h>
#endif

#include "core/status.h"
#include "cpu/cpu_internal.h"

/* ------------------------------------------------------------------------ */
/* ISA detection and registry                                                */
/* ------------------------------------------------------------------------ */

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_ok[4];           /* supported by CPU and build */
static _Atomic int isa_active;  /* natten_cpu_isa */

#if defined(NATTEN_HAVE_X86)
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0)); /* xgetbv */
    return ((uint64_t)hi << 32) | lo;
}

static void detect_x86(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return;
    const uint64_t xcr0 = read_xcr0();
    if ((xcr0 & 6u) != 6u) return; /* OS saves SSE+AVX state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    const int avx2 = (b >> 5) & 1;
    const int f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    if (avx2 && fma && f16c) isa_ok[NATTEN_CPU_ISA_AVX2] = 1;
    if (isa_ok[NATTEN_CPU_ISA_AVX2] && f512 && dq && bw && vl && (xcr0 & 0xe0u) == 0xe0u)
        isa_ok[NATTEN_CPU_ISA_AVX512] = 1;
}
#endif

static int parse_isa(const char *s, natten_cpu_isa *out) {
    static const char *names[4] = {"scalar", "avx2", "avx512", "neon"};
    for (int i = 0; i < 4; ++i)
        if (strcasecmp(s, names[i]) == 0) {
            *out = (natten_cpu_isa)i;
            return 1;
        }
    return 0;
}

static void isa_init(void) {
    isa_ok[NATTEN_CPU_ISA_SCALAR] = 1;
#if defined(NATTEN_HAVE_X86)
    detect_x86();
#endif
#if defined(NATTEN_HAVE_NEON)
    isa_ok[NATTEN_CPU_ISA_NEON] = 1; /* Advanced SIMD is mandatory on AArch64 */
#endif
    natten_cpu_isa best = NATTEN_CPU_ISA_SCALAR;
    if (isa_ok[NATTEN_CPU_ISA_NEON]) best = NATTEN_CPU_ISA_NEON;
    if (isa_ok[NATTEN_CPU_ISA_AVX2]) best = NATTEN_CPU_ISA_AVX2;
    if (isa_ok[NATTEN_CPU_ISA_AVX512]) best = NATTEN_CPU_ISA_AVX512;
    const char *env = getenv("NATTEN_CPU_ISA");
    natten_cpu_isa forced;
    if (env && *env && parse_isa(env, &forced) && isa_ok[forced]) best = forced;
    atomic_store(&isa_active, (int)best);
}

int natten_cpu_isa_supported(natten_cpu_isa isa) {
    pthread_once(&isa_once, isa_init);
    return (unsigned)isa < 4u && isa_ok[isa];
}

natten_cpu_isa natten_cpu_isa_get(void) {
    pthread_once(&isa_once, isa_init);
    return (natten_cpu_isa)atomic_load(&isa_active);
}

natten_status natten_cpu_isa_set(natten_cpu_isa isa) {
    if (!natten_cpu_isa_supported(isa))
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "natten_cpu_isa_set: isa=%d (%s) cannot run on this CPU or was "
                                "not built in; the level must be one the CPU and build support",
                                (int)isa, natten_cpu_isa_name(isa));
    atomic_store(&isa_active, (int)isa);
    return NATTEN_STATUS_SUCCESS;
}

const char *natten_cpu_isa_name(natten_cpu_isa isa) {
    switch (isa) {
    case NATTEN_CPU_ISA_SCALAR: return "scalar";
    case NATTEN_CPU_ISA_AVX2: return "avx2";
    case NATTEN_CPU_ISA_AVX512: return "avx512";
    case NATTEN_CPU_ISA_NEON: return "neon";
    }
    return "unknown";
}

const natten_cpu_kernels *natten_cpu_active_kernels(void) {
    switch (natten_cpu_isa_get()) {
#if defined(NATTEN_HAVE_X86)
    case NATTEN_CPU_ISA_AVX2: return &natten_cpu_kernels_avx2;
    case NATTEN_CPU_ISA_AVX512: return &natten_cpu_kernels_avx512;
#endif
#if defined(NATTEN_HAVE_NEON)
    case NATTEN_CPU_ISA_NEON: return &natten_cpu_kernels_neon;
#endif
    default: return &natten_cpu_kernels_scalar;
    }
}

/* ------------------------------------------------------------------------ */
/* Thread pool                                                               */
/* ------------------------------------------------------------------------ */

#define POOL_MAX 256

static pthread_mutex_t ws_lock = PTHREAD_MUTEX_INITIALIZER; /* workspace cache (below) */

static void pool_atfork_child(void);

static pthread_once_t threads_once = PTHREAD_ONCE_INIT;
static _Atomic int threads_wanted = 1;

static void threads_init(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    const char *env = getenv("NATTEN_NUM_THREADS");
    if (env && *env) {
        char *end = NULL;
        errno = 0;
        long v = strtol(env, &end, 10);
        if (errno == 0 && end && *end == '\0' && v >= 1) n = v;
    }
    if (n > POOL_MAX) n = POOL_MAX;
    atomic_store(&threads_wanted, (int)n);
    pthread_atfork(NULL, NULL, pool_atfork_child);
}

int natten_num_threads_get(void) {
    pthread_once(&threads_once, threads_init);
    return atomic_load(&threads_wanted);
}

natten_status natten_num_threads_set(int n) {
    pthread_once(&threads_once, threads_init);
    if (n < 1 || n > POOL_MAX)
        return natten_set_error(NATTEN_STATUS_INVALID_ARGUMENT,
                                "natten_num_threads_set: n=%d; the pool size must be in [1, %d]", n,
                                POOL_MAX);
    atomic_store(&threads_wanted, n);
    return NATTEN_STATUS_SUCCESS;
}

int natten_parallel_threads(void) { return natten_num_threads_get(); }

/*
 * A job is open until the caller has claimed its last chunk; only workers that
 * join while it is open (`active`) are waited for.  Waiting for every worker
 * instead (as before) made a region cost a full wake-up of each worker even
 * when the caller did all the work: on a loaded 2-core VM that was 55 us on
 * average for a 3 us region (min 5 us), 186 us after 200 us idle.
 *
 * Wake-ups: a worker that finishes a job polls for the next one for up to
 * POOL_SPIN_NS before sleeping on the condition variable, so back-to-back
 * regions (the backward runs up to five) and back-to-back calls skip the
 * futex round trip; an idle pool sleeps after that and burns no core.
 */
#define POOL_SPIN_NS 50000

typedef struct pool {
    pthread_mutex_t run_lock; /* one parallel region at a time */
    pthread_mutex_t m;
    pthread_cond_t start_cv, done_cv;
    pthread_t th[POOL_MAX];
    int nworkers; /* threads besides the caller */
    _Atomic uint64_t gen; /* written under m; read without it only to end a spin early */
    int stop;
    int open;   /* the current job still takes workers */
    int active; /* workers inside the current job */
    /* the current job */
    natten_parallel_fn fn;
    void *ctx;
    int64_t n, grain;
    int job_threads;
    _Atomic int64_t next;
} pool;

static pool P = {.run_lock = PTHREAD_MUTEX_INITIALIZER,
                 .m = PTHREAD_MUTEX_INITIALIZER,
                 .start_cv = PTHREAD_COND_INITIALIZER,
                 .done_cv = PTHREAD_COND_INITIALIZER};
static _Thread_local int in_region;

static void run_chunks(int tid) {
    for (;;) {
        int64_t b = atomic_fetch_add(&P.next, P.grain);
        if (b >= P.n) break;
        int64_t e = b + P.grain < P.n ? b + P.grain : P.n;
        P.fn(P.ctx, b, e, tid);
    }
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

typedef struct worker_arg {
    int tid;
    uint64_t gen0; /* generation when created: jobs after it are new */
} worker_arg;
static worker_arg worker_args[POOL_MAX];

/* After fork() the child has none of the parent's workers: start afresh, or
 * the first parallel call would wait for workers that do not exist. */
static void pool_atfork_child(void) {
    pthread_mutex_init(&P.run_lock, NULL);
    pthread_mutex_init(&P.m, NULL);
    pthread_cond_init(&P.start_cv, NULL);
    pthread_cond_init(&P.done_cv, NULL);
    P.nworkers = 0;
    P.stop = 0;
    P.open = 0;
    P.active = 0;
    in_region = 0;
    pthread_mutex_init(&ws_lock, NULL);
}

static void *worker_main(void *arg) {
    const int tid = ((worker_arg *)arg)->tid;
    in_region = 1;
    pthread_mutex_lock(&P.m);
    uint64_t seen = ((worker_arg *)arg)->gen0;
    for (;;) {
        if (atomic_load(&P.gen) == seen && !P.stop) {
            pthread_mutex_unlock(&P.m);
            const int64_t t0 = now_ns();
            for (int i = 0; atomic_load_explicit(&P.gen, memory_order_relaxed) == seen; ++i) {
                cpu_relax();
                if ((i & 63) == 63 && now_ns() - t0 > POOL_SPIN_NS) break;
            }
            pthread_mutex_lock(&P.m);
        }
        while (atomic_load(&P.gen) == seen && !P.stop) pthread_cond_wait(&P.start_cv, &P.m);
        if (P.stop) break;
        seen = atomic_load(&P.gen);
        if (P.open && tid < P.job_threads) {
            P.active++;
            pthread_mutex_unlock(&P.m);
            run_chunks(tid);
            pthread_mutex_lock(&P.m);
            if (--P.active == 0 && !P.open) pthread_cond_signal(&P.done_cv);
        }
    }
    pthread_mutex_unlock(&P.m);
    return NULL;
}

/* Called with run_lock held: make the pool have `want - 1` workers. */
static void pool_resize(int want) {
    if (P.nworkers == want - 1) return;
    if (P.nworkers > 0) {
        pthread_mutex_lock(&P.m);
        P.stop = 1;
        atomic_fetch_add(&P.gen, 1); /* ends the workers' spins */
        pthread_cond_broadcast(&P.start_cv);
        pthread_mutex_unlock(&P.m);
        for (int i = 0; i < P.nworkers; ++i) pthread_join(P.th[i], NULL);
        P.stop = 0;
        P.nworkers = 0;
    }
    for (int i = 0; i < want - 1; ++i) {
        worker_args[i].tid = i + 1;
        worker_args[i].gen0 = atomic_load(&P.gen);
        if (pthread_create(&P.th[i], NULL, worker_main, &worker_args[i]) != 0) break;
        P.nworkers = i + 1;
    }
}

void natten_parallel_for(int nthreads, int64_t n, int64_t grain, natten_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (nthreads > 1 && (n + grain - 1) / grain < nthreads) nthreads = (int)((n + grain - 1) / grain);
    if (nthreads <= 1 || in_region || pthread_mutex_trylock(&P.run_lock) != 0) {
        for (int64_t b = 0; b < n; b += grain) fn(ctx, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    pool_resize(natten_num_threads_get());
    pthread_mutex_lock(&P.m);
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.grain = grain;
    P.job_threads = nthreads;
    atomic_store(&P.next, 0);
    P.open = 1;
    P.active = 0;
    atomic_fetch_add(&P.gen, 1);
    pthread_cond_broadcast(&P.start_cv);
    pthread_mutex_unlock(&P.m);

    in_region = 1;
    run_chunks(0);
    in_region = 0;

    /* Every chunk is claimed: wait only for the workers that claimed some. */
    pthread_mutex_lock(&P.m);
    P.open = 0;
    while (P.active > 0) pthread_cond_wait(&P.done_cv, &P.m);
    pthread_mutex_unlock(&P.m);
    pthread_mutex_unlock(&P.run_lock);
}

/* ------------------------------------------------------------------------ */
/* Workspace cache                                                           */
/* ------------------------------------------------------------------------ */
/*
 * Large staging buffers (packed K/V, P/dS of the backward) are reused across
 * calls: a fresh multi-megabyte malloc is a fresh mmap, and touching it costs
 * a page fault per 4 KiB, which for the benchmark shapes is a sizeable share
 * of a forward pass.  A few buffers (WS_SLOTS, WS_CAP bytes in all) are kept.
 */
#define WS_SLOTS 12
#define WS_CAP ((size_t)1 << 31)
#define WS_HDR 64

static void *ws_slot[WS_SLOTS];
static size_t ws_size[WS_SLOTS];
static size_t ws_total;

void *natten_cpu_ws_get(size_t bytes) {
    if (bytes == 0) bytes = 1;
    pthread_mutex_lock(&ws_lock);
    int best = -1;
    for (int i = 0; i < WS_SLOTS; ++i)
        if (ws_slot[i] && ws_size[i] >= bytes && ws_size[i] <= 2 * bytes + (1u << 20) &&
            (best < 0 || ws_size[i] < ws_size[best]))
            best = i;
    if (best >= 0) {
        char *p = ws_slot[best];
        ws_total -= ws_size[best];
        ws_slot[best] = NULL;
        pthread_mutex_unlock(&ws_lock);
        return p + WS_HDR;
    }
    pthread_mutex_unlock(&ws_lock);
    char *p = malloc(bytes + WS_HDR);
    if (!p) return NULL;
    memcpy(p, &bytes, sizeof bytes);
    return p + WS_HDR;
}

void natten_cpu_ws_put(void *ptr) {
    if (!ptr) return;
    char *p = (char *)ptr - WS_HDR;
    size_t bytes;
    memcpy(&bytes, p, sizeof bytes);
    pthread_mutex_lock(&ws_lock);
    int slot = -1;
    for (int i = 0; i < WS_SLOTS; ++i)
        if (!ws_slot[i]) slot = i;
    if (slot >= 0 && ws_total + bytes <= WS_CAP) {
        ws_slot[slot] = p;
        ws_size[slot] = bytes;
        ws_total += bytes;
        p = NULL;
    }
    pthread_mutex_unlock(&ws_lock);
    free(p);
}
