/* The machine's own tail for fixed pieces of work about as long as a policy decision, each timed
 * ROUNDS times after a 100 us gap, as `policy bench` times decisions: slept through (the core
 * may go idle, and the hypervisor give it away) or spun through (the core stays awake).
 *   compute: an arithmetic loop that touches no memory;
 *   memory:  4096 reads spread over 2 MiB (about what a decision's instance spans), each from
 *            its own cache line, of memory another thread wrote last, as a spare instance is.
 * Any spread in the first is interrupts and the hypervisor taking the core; the second adds the
 * cost of reaching memory, which in a VM includes the host's page tables.
 * Usage: jitter ROUNDS; prints "compute|memory asleep|awake p50 p99" in microseconds. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SPAN (2u << 20)
#define LINE 64u
#define GAP_US 100

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static unsigned char *span;

static void *rewrite(void *round) {
    memset(span, (int)(long)round, SPAN);
    return NULL;
}

static void gap(int asleep) {
    if (asleep) {
        usleep(GAP_US);
        return;
    }
    long from = now_ns();
    while (now_ns() - from < GAP_US * 1000L) {}
}

static void report(const char *what, int asleep, long *taken, int rounds) {
    qsort(taken, rounds, sizeof *taken, by_value);
    long p99 = taken[(rounds * 99 + 99) / 100 - 1];
    printf("%s %s %.1f %.1f\n", what, asleep ? "asleep" : "awake", taken[rounds / 2] / 1000.0, p99 / 1000.0);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 1000;
    long *taken = calloc(rounds > 0 ? rounds : 1, sizeof *taken);
    span = malloc(SPAN);
    if (!taken || !span || rounds < 1) return 1;
    for (int asleep = 1; asleep >= 0; asleep--) {
        for (int r = 0; r < rounds; r++) {
            gap(asleep);
            long started = now_ns();
            volatile unsigned long sum = 1;
            for (long i = 0; i < 10000; i++) sum = sum * 31 + i;
            taken[r] = now_ns() - started;
        }
        report("compute", asleep, taken, rounds);
    }
    for (int asleep = 1; asleep >= 0; asleep--) {
        for (int r = 0; r < rounds; r++) {
            pthread_t writer;
            if (pthread_create(&writer, NULL, rewrite, (void *)(long)r) != 0) return 1;
            pthread_join(writer, NULL);
            gap(asleep);
            long started = now_ns();
            unsigned long sum = 0;
            /* 33 lines apart, wrapping: each line once, in an order the prefetcher does not follow. */
            for (unsigned i = 0, line = 0; i < SPAN / LINE / 8; i++, line = (line + 33) % (SPAN / LINE))
                sum += span[line * LINE];
            taken[r] = now_ns() - started;
            /* Uses the sum, so that the compiler keeps the reads. */
            if (sum == 1) puts("");
        }
        report("memory", asleep, taken, rounds);
    }
    free(span);
    free(taken);
    return 0;
}
