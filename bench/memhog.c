/* Holds N MiB of resident memory, half of it incompressible, half repetitive, and waits.
 * With "pauses", it notices its own pauses instead: every 5 ms it touches 16 pages of that
 * memory, each in a different place, and times the gap since its last round. A gap longer
 * than 20 ms is printed as "gap US" (microseconds): a freeze, or pages fetched late after a
 * post-copy restore; "alive N" every second says it carries on.
 * Usage: memhog MIB [pauses] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

static unsigned long next(unsigned long *state) {
    *state ^= *state << 13; *state ^= *state >> 7; *state ^= *state << 17;
    return *state;
}

static void notice_pauses(unsigned char *memory, size_t pages, unsigned long state) {
    long last = now_us(), second = last;
    unsigned long rounds = 0;
    for (;;) {
        struct timespec five = {0, 5000000};
        nanosleep(&five, NULL);
        for (int i = 0; i < 16; i++) memory[(next(&state) % pages) << 12] += 1;
        long at = now_us();
        if (at - last > 20000) {
            printf("gap %ld\n", at - last);
            fflush(stdout);
        }
        last = at;
        if (++rounds, at - second >= 1000000) {
            printf("alive %lu\n", rounds);
            fflush(stdout);
            second = at;
        }
    }
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    size_t size = mib << 20;
    unsigned char *memory = malloc(size);
    unsigned long state = 88172645463325252UL;
    if (!memory) return 1;
    for (size_t i = 0; i < size; i += 8) {
        if ((i >> 12) & 1) {
            memcpy(memory + i, "ckptckpt", 8);
        } else {
            next(&state);
            memcpy(memory + i, &state, 8);
        }
    }
    printf("ready %zu MiB\n", mib);
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "pauses") == 0) notice_pauses(memory, size >> 12, state);
    for (;;) sleep(60);
}
