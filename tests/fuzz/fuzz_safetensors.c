/* fuzz_safetensors.c — libFuzzer harness for the safetensors header parser (st_parse_buffer).
 *
 * Build and run (from the repository root; the lead's `make fuzz` runs the same lines):
 *   mkdir -p build/fuzz
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Isrc -I/usr/include/cjson \
 *     -o build/fuzz/fuzz_safetensors tests/fuzz/fuzz_safetensors.c src/formats/safetensors.c src/util/util.c
 * src/util/json_util.c -lcjson -lm
 *   build/fuzz/fuzz_safetensors -max_total_time=60 -close_fd_mask=2 \
 *     -dict=tests/fuzz/safetensors.dict build/fuzz/corpus_st tests/fuzz/seeds_safetensors
 * -close_fd_mask=2 silences the one-line refusals. A refusal longjmps out of the parser (in dam_dist
 * it ends the process); fuzz_alloc.h frees the cJSON tree left behind and st_close the rest, so
 * leak detection stays on.
 *
 * Each input is a whole file image. Accepted inputs have every tensor's bytes read, so ASan
 * catches any tensor pointer that the validation let run past the buffer. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_alloc.h"
#include "safetensors.h"

static jmp_buf g_refused;
static void jump_back(int status) {
    (void)status;
    longjmp(g_refused, 1);
}

static StFile g_file; /* static: it is modified between setjmp and longjmp */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dam_set_abort_hook(jump_back);
    fuzz_track_cjson();
    /* a private copy, so that the buffer ends exactly where the input does */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    memset(&g_file, 0, sizeof g_file);
    if (setjmp(g_refused) == 0) {
        st_parse_buffer(&g_file, "fuzz.safetensors", buf, size);
        volatile uint8_t sink = 0;
        for (int i = 0; i < g_file.n_tensors; i++) {
            const StTensor *t = &g_file.tensors[i];
            const uint8_t *p = t->data;
            for (size_t k = 0; k < t->nbytes; k++) sink ^= p[k];
            if (st_find(&g_file, t->name) != t) abort(); /* sorted and unique */
        }
        (void)sink;
    }
    st_close(&g_file);
    free(buf);
    fuzz_free_all();
    return 0;
}
