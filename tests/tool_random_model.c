/* tool_random_model.c — a model directory of any Hugging Face architecture dam_dist reads, with random
 * bf16 weights, and a dataset of random tokens: for measuring memory at real dimensions
 * (tests/cli_plan_real.sh, bench/bench_plan_shape.sh) without downloading a model.
 *
 * usage: tool_random_model CONFIG_JSON OUT_DIR SEED [DATASET ROWS SEQ]
 *   OUT_DIR gets CONFIG_JSON's text as config.json (with "torch_dtype": "bfloat16" as written there)
 *   and model.safetensors: every tensor hfconfig_tensor_specs names, N(0, 0.02)-like values (norms
 *   1 + small noise), seeded by SEED; DATASET (an .h5 file) gets ROWS rows of SEQ random token ids
 *   below the vocabulary size. One tensor at a time is in memory (the writer spills to disk). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "hfconfig.h"
#include "safetensors.h"
#include "util.h"

static uint64_t next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 7) {
        fprintf(stderr, "usage: %s CONFIG_JSON OUT_DIR SEED [DATASET ROWS SEQ]\n", argv[0]);
        return 2;
    }
    ModelConfig mc;
    hfconfig_load(&mc, argv[1]);
    uint64_t seed = strtoull(argv[3], NULL, 10) * 0x100000001B3ull + 1;
    dam_mkdir_p(argv[2]);
    size_t n;
    char *text = dam_read_file(argv[1], &n);
    char *cfg = dam_path_join(argv[2], "config.json");
    dam_write_file_atomic(cfg, text, n);
    free(cfg), free(text);
    int nt = hfconfig_tensor_specs(&mc, NULL);
    HfTensorSpec *specs = dam_malloc((size_t)nt * sizeof *specs, "specs");
    hfconfig_tensor_specs(&mc, specs);
    StWriter *w = st_writer_new(argv[2], (size_t)1 << 40);
    for (int t = 0; t < nt; t++) {
        size_t numel = 1;
        for (int d = 0; d < specs[t].ndim; d++) numel *= (size_t)specs[t].shape[d];
        uint16_t *v = dam_malloc(numel * sizeof(uint16_t), specs[t].name);
        int norm = strstr(specs[t].name, "norm") != NULL;
        for (size_t i = 0; i < numel; i++) {
            uint64_t r = next(&seed);
            /* a sum of 4 uniforms in [-1, 1): near-normal, scaled to std 0.02 (norms: 1 + that) */
            float u = 0;
            for (int k = 0; k < 4; k++) u += (float)((r >> (16 * k)) & 0xFFFF) / 32768.0f - 1.0f;
            float x = u * 0.0173f + (norm ? 1.0f : 0.0f);
            v[i] = dam_f32_to_bf16(x);
        }
        st_writer_add(w, specs[t].name, DAM_BF16, specs[t].ndim, specs[t].shape, v);
        free(v);
    }
    st_writer_finish(w, "pt");
    free(specs);
    if (argc == 7) {
        int64_t rows = atoll(argv[5]), seq = atoll(argv[6]);
        int32_t *ids = dam_malloc((size_t)(rows * seq) * sizeof(int32_t), "ids");
        for (int64_t i = 0; i < rows * seq; i++) ids[i] = (int32_t)(next(&seed) % (uint64_t)mc.vocab_size);
        dataset_write(argv[4], rows, seq, ids, NULL, 0, NULL);
        free(ids);
    }
    return 0;
}
