/* The machine's own tail for a fixed piece of work about as long as a policy decision: the same
 * arithmetic loop timed ROUNDS times, each after the thread slept (its core may go idle) or
 * after it spun (its core stayed awake). Nothing in the loop touches memory, so any spread is
 * the machine's: interrupts, and a hypervisor that takes the core away or is slow to give it
 * back. Usage: jitter LOOPS ROUNDS; prints "asleep|awake p50 p99" in microseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The gap between rounds, as long as the bench's wait for the next instance. */
#define GAP_US 100

int main(int argc, char **argv) {
    long loops = argc > 1 ? atol(argv[1]) : 10000;
    int rounds = argc > 2 ? atoi(argv[2]) : 1000;
    long *taken = calloc(rounds, sizeof *taken);
    if (!taken || rounds < 1) return 1;
    for (int asleep = 1; asleep >= 0; asleep--) {
        for (int r = 0; r < rounds; r++) {
            if (asleep) {
                usleep(GAP_US);
            } else {
                long gap_from = now_ns();
                while (now_ns() - gap_from < GAP_US * 1000L) {}
            }
            long started = now_ns();
            volatile unsigned long sum = 1;
            for (long i = 0; i < loops; i++) sum = sum * 31 + i;
            taken[r] = now_ns() - started;
        }
        qsort(taken, rounds, sizeof *taken, by_value);
        long p99 = taken[(rounds * 99 + 99) / 100 - 1];
        printf("%s %.1f %.1f\n", asleep ? "asleep" : "awake", taken[rounds / 2] / 1000.0, p99 / 1000.0);
    }
    free(taken);
    return 0;
}
