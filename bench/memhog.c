/* Holds N MiB of resident memory, half of it incompressible, half repetitive, and waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            memcpy(memory + i, &state, 8);
        }
    }
    printf("ready %zu MiB\n", mib);
    fflush(stdout);
    for (;;) sleep(60);
}
