/* bench_checksum.c — the cost of issue 24's checksums at 70B scale (docs/operators.md, "Checksums"):
 *   1. XXH64 (and, for comparison, the FNV-1a of dam_hash64) over the coefficients of a 70B merge:
 *      3 sources x 80 layers x (q, k, v, o, gate, up: 8192 columns; down: 28672), fp32, for the
 *      coefficients and both Adam moments (224 MB);
 *   2. writing that checkpoint (ckpt_create/ckpt_put/ckpt_close, hashing included) and ckpt_verify
 *      reading it back whole;
 *   3. a token file of ROWS x 8192 tokens (default 8192 rows: 256 MiB of ids + 64 MiB of mask),
 *      dataset_open with its checksums checked and with DAM_SKIP_DATA_CHECKSUMS=1.
 * usage: build/bench/bench_checksum [DIR (default /tmp)] [ROWS]. The file system's page cache
 * holds what was just written, so 2 and 3 measure hashing plus HDF5 reads from memory: the cold
 * numbers on a shared file system are those reads at its bandwidth. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dataset.h"
#include "util.h"
#include "xxh64.h"

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    int64_t rows = argc > 2 ? atoll(argv[2]) : 8192, L = 8192;
    const int R = 3, layers = 80;
    const int cols[7] = {8192, 8192, 8192, 8192, 8192, 8192, 28672};
    const char *kinds[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    size_t per_layer = 0;
    for (int k = 0; k < 7; k++) per_layer += (size_t)R * cols[k];
    size_t n = per_layer * layers, bytes = n * sizeof(float);
    float *c = dam_malloc(bytes, "bench");
    for (size_t i = 0; i < n; i++) c[i] = 1.0f + 1e-7f * (float)(i % 1000003);

    double t = dam_now();
    uint64_t h = 0;
    for (int rep = 0; rep < 3; rep++) h ^= dam_xxh64(c, bytes, (uint64_t)rep);
    double xx = 3 * bytes / (dam_now() - t) / 1e6;
    t = dam_now();
    h ^= dam_hash64(c, bytes, 0);
    double fnv = bytes / (dam_now() - t) / 1e6;
    printf("coefficients of a 70B merge: %zu floats per array (%.1f MB), x3 with the Adam moments\n", n,
           bytes / 1e6);
    printf("XXH64   %8.0f MB/s  (%.3f s for coefficients + Adam moments)\n", xx, 3 * bytes / 1e6 / xx);
    printf("FNV-1a  %8.0f MB/s  (for comparison; %016" PRIx64 ")\n", fnv, h);

    char *ck = dam_asprintf("%s/bench_checksum_ckpt.h5", dir);
    CkptMeta meta;
    memset(&meta, 0, sizeof meta);
    meta.step = 100, meta.total_steps = 1000, meta.n_datasets = 3;
    snprintf(meta.sources, sizeof meta.sources, "a;b;c");
    t = dam_now();
    ckpt_create(ck, &meta);
    CkptFile *f = ckpt_append(ck);
    size_t at = 0;
    for (int l = 0; l < layers; l++)
        for (int k = 0; k < 7; k++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, kinds[k]);
            ckpt_put(f, name, R, cols[k], c + at, c + at, c + at);
            at += (size_t)R * cols[k];
        }
    ckpt_close(f);
    double wr = dam_now() - t;
    char why[512];
    t = dam_now();
    int rc = ckpt_verify(ck, why, sizeof why);
    double ver = dam_now() - t;
    printf("checkpoint of %d tensors (%.0f MB): written in %.2f s; ckpt_verify %.2f s (%.0f MB/s): %s\n",
           layers * 7, 3 * bytes / 1e6, wr, ver, 3 * bytes / 1e6 / ver, rc == 1 ? "verified" : why);
    unlink(ck);
    free(ck), free(c);

    char *tf = dam_asprintf("%s/bench_checksum_tokens.h5", dir);
    int32_t *ids = dam_malloc((size_t)(rows * L) * sizeof *ids, "bench ids");
    int8_t *mask = dam_malloc((size_t)(rows * L), "bench mask");
    for (int64_t i = 0; i < rows * L; i++) ids[i] = (int32_t)(i % 128000), mask[i] = 1;
    dataset_write(tf, rows, L, ids, mask, 0, NULL);
    free(ids), free(mask);
    double mb = (double)rows * L * 5 / 1e6;
    DamDataset d;
    t = dam_now();
    dataset_open(&d, tf);
    double on = dam_now() - t;
    dataset_close(&d);
    setenv("DAM_SKIP_DATA_CHECKSUMS", "1", 1);
    t = dam_now();
    dataset_open(&d, tf);
    double off = dam_now() - t;
    dataset_close(&d);
    printf(
        "token file %lld x %lld (%.0f MB): dataset_open %.2f s with checksums (%.0f MB/s), %.4f s skipped\n",
        (long long)rows, (long long)L, mb, on, mb / (on - off), off);
    unlink(tf);
    free(tf);
    return 0;
}
