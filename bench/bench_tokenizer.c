/* bench_tokenizer.c — tokens per second of the C tokenizer on one core.
 *
 *   bench_tokenizer TOKENIZER_DIR CORPUS [REPEATS]
 *
 * CORPUS holds documents separated by NUL bytes (bench/bench_tokenizer.py writes it). Each document
 * is encoded separately (as `tokenize` / `prepare` do); the best of REPEATS passes is reported as
 * one line: "tokens <n> checksum <sum of ids mod 2^32> bytes <n> seconds <s> tokens_per_s <r>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR CORPUS [REPEATS]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    Tokenizer t;
    tokenizer_load(&t, argv[1]);
    size_t size;
    char *data = dam_read_file(argv[2], &size);
    TokIds ids = {0};
    double best = 1e30;
    uint64_t n_tokens = 0;
    uint32_t checksum = 0;
    for (int r = 0; r < repeats; r++) {
        tokenizer_free(&t); /* a cold word cache each pass, as a fresh process would have */
        tokenizer_load(&t, argv[1]);
        n_tokens = 0;
        checksum = 0;
        double t0 = dam_now();
        for (size_t pos = 0; pos < size;) {
            const char *end = memchr(data + pos, 0, size - pos);
            size_t len = end ? (size_t)(end - (data + pos)) : size - pos;
            ids.n = 0;
            const char *err = tokenizer_encode(&t, data + pos, len, &ids);
            if (err) dam_fail("%s: document at byte %zu: %s", argv[2], pos, err);
            n_tokens += ids.n;
            for (size_t i = 0; i < ids.n; i++) checksum += (uint32_t)ids.ids[i];
            pos += len + 1;
        }
        double dt = dam_now() - t0;
        if (dt < best) best = dt;
    }
    printf("tokens %llu checksum %u bytes %zu seconds %.4f tokens_per_s %.0f\n", (unsigned long long)n_tokens,
           checksum, size, best, (double)n_tokens / best);
    tokids_free(&ids);
    free(data);
    tokenizer_free(&t);
    return 0;
}
