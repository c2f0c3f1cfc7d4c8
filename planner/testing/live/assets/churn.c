/*
 * churn: forked workers whose anonymous pages have known KSM behaviour.
 *
 * Part of ksm-planner's live validation harness (planner/testing/live, docs/live-validation.md).
 * Compiled at run time with `gcc -O2 -o churn churn.c`; started under KSM by
 * `ksm-planner launch` (prctl(PR_SET_MEMORY_MERGE) before exec, inherited by fork), so every
 * private anonymous mapping of every worker is mergeable.
 *
 * The parent forks --workers children and waits. Each worker maps its own private anonymous
 * regions (MAP_PRIVATE|MAP_ANONYMOUS, so nothing is fork-shared) and writes them itself:
 *
 *   stable    page i = P(stable, i): identical in every worker, never written again.
 *   unique    page i = P(unique, worker, i): different everywhere, never written again.
 *   fast<ms>  three regions; page i = P(fast, ms, i, epoch) with epoch = now_ms / period:
 *             identical in every worker at the same instant, rewritten (new content) at
 *             every epoch change. Periods --fast-periods (default 50,200,1000 ms).
 *   osc       page i toggles between P(osc-A, i) and P(osc-B, i) every --osc-period-ms.
 *   rewrite   page i = P(rewrite, i), rewritten with the SAME bytes every
 *             --rewrite-period-ms (a write to a merged page breaks the merge: one cow_ksm).
 *   heap      a reservation of --heap-max pages of which the first --heap pages are
 *             written with P(heap, i) at start; SIGUSR1 grows the written part to --heap-max,
 *             SIGUSR2 shrinks it to --heap-shrink pages (MADV_DONTNEED of the tail).
 *
 * Epochs come from CLOCK_MONOTONIC (one clock for all processes of the host), so every
 * worker writes the same content in the same epoch. Each worker wakes every --tick-ms and
 * rewrites what is due. The first 8 bytes of every page hold a tag so that no two regions
 * and no two epochs collide; the rest is a splitmix64 stream seeded by the tag.
 *
 * When every worker has written its regions, the parent writes "ready <pid>...\n" to
 * --ready-file. SIGTERM/SIGINT to the parent stops the workers and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_WORKERS 256
#define MAX_FAST 8

static long opt_workers = 4, opt_stable = 4000, opt_unique = 1000, opt_osc = 1000;
static long opt_rewrite = 1000, opt_heap = 2000, opt_heap_max = 4000, opt_heap_shrink = 1000;
static long opt_osc_period_ms = 3000, opt_rewrite_period_ms = 500, opt_tick_ms = 10;
static long opt_fast_pages[MAX_FAST] = {200, 300, 500};
static long opt_fast_period_ms[MAX_FAST] = {50, 200, 1000};
static int n_fast = 3;
static const char *opt_ready_file = NULL;

static volatile sig_atomic_t want_stop = 0, want_grow = 0, want_shrink = 0;

static void on_stop(int sig) { (void)sig; want_stop = 1; }
static void on_grow(int sig) { (void)sig; want_grow = 1; }
static void on_shrink(int sig) { (void)sig; want_shrink = 1; }

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Fill one page with the content named by (kind, a, b, c). */
static void fill(unsigned char *page, uint64_t kind, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t seed = (kind << 56) ^ (a * 0x100000001B3ULL) ^ (b << 20) ^ (c * 0xC2B2AE3D27D4EB4FULL);
    uint64_t *w = (uint64_t *)page;
    uint64_t s = seed;
    w[0] = seed;
    for (size_t i = 1; i < PAGE / 8; i++) w[i] = splitmix64(&s);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static unsigned char *region(long pages) {
    if (pages <= 0) return NULL;
    void *p = mmap(NULL, (size_t)pages * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("churn: mmap");
        exit(3);
    }
    madvise(p, (size_t)pages * PAGE, MADV_NOHUGEPAGE); /* one 4 KiB page per visit, as traced */
    return (unsigned char *)p;
}

enum { K_STABLE = 1, K_UNIQUE, K_FAST, K_OSC_A, K_OSC_B, K_REWRITE, K_HEAP };

static int worker(long index, int ready_fd) {
    unsigned char *stable = region(opt_stable), *unique = region(opt_unique);
    unsigned char *osc = region(opt_osc), *rewrite = region(opt_rewrite);
    unsigned char *heap = region(opt_heap_max);
    unsigned char *fast[MAX_FAST];
    long fast_epoch[MAX_FAST];
    for (long i = 0; i < opt_stable; i++) fill(stable + i * PAGE, K_STABLE, (uint64_t)i, 0, 0);
    for (long i = 0; i < opt_unique; i++)
        fill(unique + i * PAGE, K_UNIQUE, (uint64_t)i, (uint64_t)index + 1, (uint64_t)getpid());
    for (long i = 0; i < opt_rewrite; i++) fill(rewrite + i * PAGE, K_REWRITE, (uint64_t)i, 0, 0);
    long heap_written = opt_heap;
    for (long i = 0; i < heap_written; i++) fill(heap + i * PAGE, K_HEAP, (uint64_t)i, 0, 0);
    long t = now_ms();
    for (int f = 0; f < n_fast; f++) {
        fast[f] = region(opt_fast_pages[f]);
        fast_epoch[f] = t / opt_fast_period_ms[f];
        for (long i = 0; i < opt_fast_pages[f]; i++)
            fill(fast[f] + i * PAGE, K_FAST, (uint64_t)i, (uint64_t)opt_fast_period_ms[f],
                 (uint64_t)fast_epoch[f]);
    }
    long osc_epoch = t / opt_osc_period_ms;
    for (long i = 0; i < opt_osc; i++)
        fill(osc + i * PAGE, (osc_epoch & 1) ? K_OSC_B : K_OSC_A, (uint64_t)i, 0, 0);
    long rewrite_epoch = t / opt_rewrite_period_ms;
    /* a private copy of the rewrite contents: each rewrite copies the same bytes back */
    unsigned char *rewrite_src = NULL;
    if (opt_rewrite > 0) {
        rewrite_src = malloc((size_t)opt_rewrite * PAGE);
        if (!rewrite_src) exit(3);
        memcpy(rewrite_src, rewrite, (size_t)opt_rewrite * PAGE);
        /* the copy is heap memory of this worker too: make it differ from every other page
           (else it merges with the rewrite region) by storing it xor-ed with a worker key */
        for (size_t i = 0; i < (size_t)opt_rewrite * PAGE; i++)
            rewrite_src[i] ^= (unsigned char)(0x5A + index + (i >> 12));
    }
    char one = 'r';
    if (write(ready_fd, &one, 1) != 1) exit(3);
    close(ready_fd);

    while (!want_stop) {
        struct timespec ts = {0, opt_tick_ms * 1000000L};
        nanosleep(&ts, NULL);
        t = now_ms();
        for (int f = 0; f < n_fast; f++) {
            long e = t / opt_fast_period_ms[f];
            if (e == fast_epoch[f]) continue;
            fast_epoch[f] = e;
            for (long i = 0; i < opt_fast_pages[f]; i++)
                fill(fast[f] + i * PAGE, K_FAST, (uint64_t)i, (uint64_t)opt_fast_period_ms[f],
                     (uint64_t)e);
        }
        long e = t / opt_osc_period_ms;
        if (e != osc_epoch) {
            osc_epoch = e;
            for (long i = 0; i < opt_osc; i++)
                fill(osc + i * PAGE, (e & 1) ? K_OSC_B : K_OSC_A, (uint64_t)i, 0, 0);
        }
        e = t / opt_rewrite_period_ms;
        if (e != rewrite_epoch && rewrite_src) {
            rewrite_epoch = e;
            for (size_t i = 0; i < (size_t)opt_rewrite * PAGE; i++)
                rewrite[i] = rewrite_src[i] ^ (unsigned char)(0x5A + index + (i >> 12));
        }
        if (want_grow) {
            want_grow = 0;
            for (long i = heap_written; i < opt_heap_max; i++)
                fill(heap + i * PAGE, K_HEAP, (uint64_t)i, 0, 0);
            if (heap_written < opt_heap_max) heap_written = opt_heap_max;
        }
        if (want_shrink) {
            want_shrink = 0;
            if (heap_written > opt_heap_shrink) {
                madvise(heap + opt_heap_shrink * PAGE,
                        (size_t)(heap_written - opt_heap_shrink) * PAGE, MADV_DONTNEED);
                heap_written = opt_heap_shrink;
            }
        }
    }
    return 0;
}

static long parse_long(const char *name, const char *v) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0) {
        fprintf(stderr, "churn: %s needs a non-negative integer, got %s\n", name, v);
        exit(2);
    }
    return x;
}

static int parse_list(const char *name, const char *v, long *out) {
    int n = 0;
    char *copy = strdup(v), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == MAX_FAST) {
            fprintf(stderr, "churn: %s takes at most %d values\n", name, MAX_FAST);
            exit(2);
        }
        out[n++] = parse_long(name, tok);
    }
    free(copy);
    return n;
}

int main(int argc, char **argv) {
    int n_pages = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "churn: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--workers")) opt_workers = parse_long(a, v);
        else if (!strcmp(a, "--stable")) opt_stable = parse_long(a, v);
        else if (!strcmp(a, "--unique")) opt_unique = parse_long(a, v);
        else if (!strcmp(a, "--osc")) opt_osc = parse_long(a, v);
        else if (!strcmp(a, "--osc-period-ms")) opt_osc_period_ms = parse_long(a, v);
        else if (!strcmp(a, "--rewrite")) opt_rewrite = parse_long(a, v);
        else if (!strcmp(a, "--rewrite-period-ms")) opt_rewrite_period_ms = parse_long(a, v);
        else if (!strcmp(a, "--heap")) opt_heap = parse_long(a, v);
        else if (!strcmp(a, "--heap-max")) opt_heap_max = parse_long(a, v);
        else if (!strcmp(a, "--heap-shrink")) opt_heap_shrink = parse_long(a, v);
        else if (!strcmp(a, "--tick-ms")) opt_tick_ms = parse_long(a, v);
        else if (!strcmp(a, "--fast-pages")) n_pages = parse_list(a, v, opt_fast_pages);
        else if (!strcmp(a, "--fast-periods")) n_fast = parse_list(a, v, opt_fast_period_ms);
        else if (!strcmp(a, "--ready-file")) opt_ready_file = v;
        else {
            fprintf(stderr, "churn: unknown option %s\n", a);
            return 2;
        }
    }
    if (n_pages >= 0 && n_pages != n_fast) {
        fprintf(stderr, "churn: --fast-pages and --fast-periods need as many values\n");
        return 2;
    }
    if (opt_workers < 1 || opt_workers > MAX_WORKERS || opt_heap > opt_heap_max ||
        opt_heap_shrink > opt_heap_max || opt_osc_period_ms < 1 || opt_rewrite_period_ms < 1 ||
        opt_tick_ms < 1) {
        fprintf(stderr, "churn: impossible options (workers 1..%d, heap <= heap-max, periods >= 1)\n",
                MAX_WORKERS);
        return 2;
    }
    for (int f = 0; f < n_fast; f++)
        if (opt_fast_period_ms[f] < 1) {
            fprintf(stderr, "churn: fast periods must be >= 1 ms\n");
            return 2;
        }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_grow;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_shrink;
    sigaction(SIGUSR2, &sa, NULL);

    int fds[2];
    if (pipe(fds)) return 3;
    pid_t pids[MAX_WORKERS];
    long started = 0;
    for (long w = 0; w < opt_workers; w++) {
        pid_t p = fork();
        if (p < 0) {
            perror("churn: fork");
            want_stop = 1;
            break;
        }
        if (p == 0) {
            close(fds[0]);
            _exit(worker(w, fds[1]));
        }
        pids[w] = p;
        started++;
    }
    close(fds[1]);
    long ready = 0;
    char c;
    while (!want_stop && ready < started) {
        ssize_t r = read(fds[0], &c, 1);
        if (r == 1) ready++;
        else if (r == 0 || (r < 0 && errno != EINTR)) break;
    }
    close(fds[0]);
    if (ready == opt_workers && opt_ready_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", opt_ready_file);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "ready");
            for (long w = 0; w < opt_workers; w++) fprintf(f, " %d", (int)pids[w]);
            fprintf(f, "\n");
            fclose(f);
            rename(tmp, opt_ready_file);
        }
    }
    /* SIGUSR1/SIGUSR2 are sent to the workers by pid (the parent ignores them) */
    while (!want_stop && ready == opt_workers) pause();
    for (long w = 0; w < started; w++) kill(pids[w], SIGTERM);
    int status = 0, rc = 0;
    for (long w = 0; w < started; w++) {
        while (waitpid(pids[w], &status, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status)) rc = 1;
    }
    return ready == opt_workers ? rc : 1;
}
