/* glibc_compat.c — arc4random, arc4random_buf and arc4random_uniform (glibc 2.36) for a GPU machine
 * whose glibc is older, built by tests/cuda/prepare_carry.sh into the carry as
 * lib/libdam_glibc_compat.so with the symbol version GLIBC_2.36 (glibc_compat.map) and preloaded by
 * tests/cuda/run.sh for dam_dist and mpirun only. The carried libevent (Open MPI's) needs them with
 * that version; prepare_carry.sh marks that need weak (glibc_versions.py), so an older glibc loads it
 * and binds the symbols here. Random bytes from getrandom (glibc 2.25), /dev/urandom as a fallback. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>

void arc4random_buf(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
            if (fd < 0) abort();
            while (n > 0) {
                ssize_t r = read(fd, p, n);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) abort();
                p += r;
                n -= (size_t)r;
            }
            close(fd);
            return;
        }
        p += got;
        n -= (size_t)got;
    }
}

uint32_t arc4random(void) {
    uint32_t v;
    arc4random_buf(&v, sizeof v);
    return v;
}

/* uniform in [0, upper): reject the values below 2^32 mod upper */
uint32_t arc4random_uniform(uint32_t upper) {
    if (upper < 2) return 0;
    uint32_t floor = (uint32_t)(-upper) % upper, v;
    do v = arc4random();
    while (v < floor);
    return v % upper;
}
