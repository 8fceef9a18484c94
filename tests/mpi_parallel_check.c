/* mpi_parallel_check.c — pipeline and tensor parallelism against the torch reference, run under
 * `mpirun -n PP*TP build/tests/mpi_parallel_check PP TP` by tests/cli_parallel.sh. Each pipeline
 * stage holds its layers of every source; each tp rank 1/TP of the heads, KV heads, FFN width and
 * vocabulary (Megatron column/row/vocabulary-parallel). The losses and every coefficient gradient
 * (each rank checks the tensors and columns it holds) must match the fixtures made by
 * transformers + torch autograd within the single-process tolerances, and the merged logits of each
 * last-stage rank's vocabulary slice must match too. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "test_util.h"
#include "test_dam.h"

static double scalar(const StFile *f, const char *key) {
    const StTensor *t = st_find(f, key);
    if (!t) dam_fail("expected file lacks %s", key);
    return t->dtype == DAM_F64 ? *(const double *)t->data : *(const float *)t->data;
}

static int near(double got, double want, double tol) {
    return fabs(got - want) <= tol * fmax(fabs(want), 1e-8);
}

static int check_case(const ProcessGrid *g, const char *name, const char *variant) {
    DamCase dc;
    dam_case_open_parallel(&dc, name, variant, &g->tp_group, &g->pp_group);
    dc.batched = 1;
    DamLosses l;
    dam_case_loss(&dc, &l);
    char path[512], key[256];
    char *dir = test_fixture("dam");
    snprintf(path, sizeof path, "%s/%s/expected_%s.safetensors", dir, name, variant);
    free(dir);
    StFile exp;
    st_open(&exp, path);
    int ok = near(l.total, scalar(&exp, "loss64/total"), 1e-4);
    for (int k = 0; k < dc.n_data; k++) {
        snprintf(key, sizeof key, "loss64/kl/%d", k);
        ok &= near(l.kl[k], scalar(&exp, key), 1e-4);
    }
    double worst = 0;
    float *grad = test_coef_get(&dc.m, DAM_COEF_GRAD);
    for (int t = 0; t < dc.m.n_tensors; t++) {
        DamTensor *x = &dc.m.tensors[t];
        if (!x->trainable) continue;
        snprintf(key, sizeof key, "grad/%s", x->name);
        const StTensor *ref = st_find(&exp, key);
        const float *r = ref->data;
        double scale = 1e-8, diff = 0;
        for (size_t j = 0; j < ref->numel; j++) scale = fmax(scale, fabs(r[j]));
        for (int i = 0; i < dc.m.n_coef_rows; i++)
            for (int j = 0; j < x->dim; j++)
                diff = fmax(diff, fabs(grad[x->coef_at + (size_t)i * x->dim + j] -
                                       r[(size_t)i * x->coef_full + x->coef_off + j]));
        worst = fmax(worst, diff / scale);
    }
    free(grad);
    ok &= worst <= 1e-3;
    /* merged logits of this rank's vocabulary slice */
    size_t BT = (size_t)dc.B * dc.T, V = (size_t)dc.m.cfg.vocab_size, Vf = (size_t)dc.m.full_cfg.vocab_size;
    float *z = malloc(BT * V * sizeof(float));
    dam_model_logits(&dc.m, dc.rs, dc.ids[0], dc.B, dc.T, -1, z);
    const float *zr = st_find(&exp, "merged_logits/0")->data;
    double zs = 1e-8, zd = 0;
    for (size_t t = 0; t < BT; t++)
        for (size_t v = 0; v < V; v++) {
            zs = fmax(zs, fabs(zr[t * Vf + dc.m.vocab_offset + v]));
            zd = fmax(zd, fabs(z[t * V + v] - zr[t * Vf + dc.m.vocab_offset + v]));
        }
    if (!dc.m.last) zd = 0; /* logits live on the last stage */
    ok &= zd / zs <= 1e-4;
    free(z);
    ok = !comm_any(&g->world, !ok);
    float worst_all[2] = {(float)worst, (float)(zd / zs)}; /* the worst over every rank, for the report */
    comm_allreduce_max_f32(&g->world, worst_all, 2);
    worst = worst_all[0], zd = worst_all[1] * zs;
    if (g->world.rank == 0)
        printf("pp=%d tp=%d %-10s %-5s loss %.8f  max grad rel diff %.2e  logits rel diff %.2e  %s\n", g->pp,
               g->tp, name, variant, l.total, worst, zd / zs, ok ? "OK" : "NOT OK");
    st_close(&exp);
    dam_case_close(&dc);
    return ok;
}

/* Write the merged model of a case from this layout into out/<name>, and (rank 0) compare every
 * tensor byte for byte with the one written by the single-process layout in ref/<name>. */
static int write_and_compare(const ProcessGrid *g, const char *name, const char *variant, const char *out,
                             const char *ref) {
    DamCase dc;
    dam_case_open_parallel(&dc, name, variant, &g->tp_group, &g->pp_group);
    DamConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    char donor[512], out_dir[512], ref_dir[512];
    char *dir = test_fixture("dam");
    snprintf(donor, sizeof donor, "%s/%s/m0", dir, name);
    free(dir);
    snprintf(out_dir, sizeof out_dir, "%s/%s", out, name);
    snprintf(ref_dir, sizeof ref_dir, "%s/%s", ref, name);
    cfg.models[0].path = donor;
    cfg.n_models = 1;
    cfg.out_dir = out_dir;
    cfg.shard_bytes = 96 * 1024; /* several shards per stage */
    OutputReport rep = {.steps = 0};
    output_write_parallel(&dc.m, &cfg, &rep, &g->world);
    int ok = 1;
    if (g->world.rank == 0 && strcmp(out, ref) != 0) {
        StModel a, b;
        st_model_open(&a, out_dir);
        st_model_open(&b, ref_dir);
        ok = a.n_tensors == b.n_tensors;
        for (int f = 0; ok && f < b.n_files; f++)
            for (int t = 0; ok && t < b.files[f].n_tensors; t++) {
                const StTensor *y = &b.files[f].tensors[t], *x = st_model_find(&a, y->name);
                ok = x && x->nbytes == y->nbytes && !memcmp(x->data, y->data, y->nbytes);
            }
        st_model_close(&a), st_model_close(&b);
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s/dam_coefficients.safetensors", out_dir);
        snprintf(pb, sizeof pb, "%s/dam_coefficients.safetensors", ref_dir);
        StFile ca, cb;
        st_open(&ca, pa), st_open(&cb, pb);
        ok &= ca.n_tensors == cb.n_tensors;
        for (int t = 0; ok && t < cb.n_tensors; t++) {
            const StTensor *x = st_find(&ca, cb.tensors[t].name);
            ok = x && x->nbytes == cb.tensors[t].nbytes && !memcmp(x->data, cb.tensors[t].data, x->nbytes);
        }
        st_close(&ca), st_close(&cb);
        printf("pp=%d tp=%d %-10s written model and coefficients equal the single-process output: %s\n",
               g->pp, g->tp, name, ok ? "OK" : "NOT OK");
    }
    ok = !comm_any(&g->world, !ok);
    dam_case_close(&dc);
    return ok;
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    ProcessGrid g;
    int pp = argc > 1 ? atoi(argv[1]) : 1, tp = argc > 2 ? atoi(argv[2]) : comm_world_size();
    grid_init(&g, 1, pp, tp);
    int ok = 1;
    ok &= check_case(&g, "llama3src", "kl");
    ok &= check_case(&g, "llama3src", "all");
    ok &= check_case(&g, "qwen2base", "topk");
    ok &= check_case(&g, "qwen2base", "relu");
    /* Qwen3: q_norm / k_norm whole on every tp rank, their gradients summed over it */
    ok &= check_case(&g, "qwen3src", "kl");
    ok &= check_case(&g, "qwen3src", "all");
    ok &= check_case(&g, "qwen3src", "topk");
    if (argc > 4) { /* argv[3]: where to write, argv[4]: the single-process output to compare with */
        ok &= write_and_compare(&g, "llama3src", "all", argv[3], argv[4]);
        ok &= write_and_compare(&g, "qwen2base", "topk", argv[3], argv[4]);
        ok &= write_and_compare(&g, "qwen3src", "all", argv[3], argv[4]);
    }
    grid_free(&g);
    comm_finalize();
    return ok ? 0 : 1;
}
