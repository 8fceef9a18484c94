/* fuzz_hfconfig.c — libFuzzer harness for the config.json parser (hfconfig_parse).
 *
 * Build and run (from the repository root; the lead's `make fuzz` runs the same lines):
 *   mkdir -p build/fuzz
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Isrc -I/usr/include/cjson \
 *     -o build/fuzz/fuzz_hfconfig tests/fuzz/fuzz_hfconfig.c src/formats/hfconfig.c src/util/util.c src/util/json_util.c
 * -lcjson -lm
 *   build/fuzz/fuzz_hfconfig -max_total_time=60 -close_fd_mask=2 \
 *     -dict=tests/fuzz/hfconfig.dict build/fuzz/corpus_cfg tests/fixtures/configs
 * (A refusal longjmps out of the parser; fuzz_alloc.h frees the cJSON tree it leaves behind.)
 *
 * Accepted configs are also run through everything derived from them (parameter count, tensor
 * list, rope frequencies), bounded so that a huge but valid config does not stall the fuzzer. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hfconfig.h"
#include "util.h"
#include "fuzz_alloc.h"

static jmp_buf g_refused;
static void jump_back(int status) {
    (void)status;
    longjmp(g_refused, 1);
}

static char *g_text; /* static: it is live across setjmp/longjmp */

static void exercise(const ModelConfig *c) {
    if (c->num_hidden_layers <= 256) {
        int n = hfconfig_tensor_specs(c, NULL);
        HfTensorSpec *specs = malloc((size_t)n * sizeof *specs);
        if (hfconfig_tensor_specs(c, specs) != n) abort();
        free(specs);
        (void)hfconfig_num_params(c);
    }
    if (c->head_dim <= 1 << 16) {
        double *inv = malloc((size_t)(c->head_dim / 2) * sizeof(double) + 1);
        hfconfig_rope_inv_freq(c, inv);
        free(inv);
    }
    hfconfig_check_same(c, "a", c, "a"); /* a config always agrees with itself */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dam_set_abort_hook(jump_back);
    fuzz_track_cjson();
    g_text = malloc(size + 1);
    memcpy(g_text, data, size);
    g_text[size] = 0;
    ModelConfig c;
    if (setjmp(g_refused) == 0) {
        hfconfig_parse(&c, g_text, "fuzz/config.json");
        exercise(&c);
    }
    free(g_text);
    fuzz_free_all();
    return 0;
}
