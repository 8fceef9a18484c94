/* test_dam.h — loading the DAM fixtures of tests/fixtures/dam/<case> and computing the full loss
 * and coefficient gradients the way a training step does (without the optimizer). Header-only. */
#ifndef DAM_TEST_DAM_H
#define DAM_TEST_DAM_H

#include <cJSON.h>

#include "config.h"
#include "json_util.h"
#include "model.h"
#include "optim.h"
#include "step.h"
#include "output.h"
#include "safetensors.h"

/* The backend the tests run on: "cpu", or DAM_BACKEND's (the suite's guard pass), with one context
 * per test process (on the CPU and guard backends a context is cheap; never freed). */
static inline const Backend *test_be(void) { return backend_by_name("cpu"); }
static inline BackendCtx *test_ctx(void) {
    static BackendCtx *ctx;
    if (!ctx) ctx = test_be()->ctx_new(0);
    return ctx;
}

/* Host copies of a coefficient block (heap; free them) and the way back. */
static inline float *test_coef_get(const DamModel *m, DamCoefBlock b) { return dam_model_coef_host(m, b); }
static inline void test_coef_put(DamModel *m, DamCoefBlock b, const float *host) {
    dam_model_coef_upload(m, b, host);
}

typedef struct {
    DamModel m;
    RunState *rs;
    DamConfig cfg; /* only the loss/merge fields are used */
    StFile inputs;
    int n_data, B, T;
    int batched;      /* 1: all datasets in one dam_step; 0: one dam_micro_batches each */
    int base_teacher; /* batched: every dataset taught by the last row (the base; train.c's base_dataset) */
    const int32_t *ids[DAM_MAX_SOURCES];
    const int8_t *mask[DAM_MAX_SOURCES];
} DamCase;

/* Open tests/fixtures/dam/<name> with settings_<variant>.json and coef_init.safetensors, holding
 * this rank's tensor-parallel share over tp and its pipeline stage over pp (NULL: the whole model). */
static inline void dam_case_open_parallel(DamCase *dc, const char *name, const char *variant,
                                          const CommGroup *tp, const CommGroup *pp) {
    memset(dc, 0, sizeof *dc);
    char *dir = test_fixture("dam");
    char path[512];
    snprintf(path, sizeof path, "%s/%s/settings_%s.json", dir, name, variant);
    cJSON *s = json_parse_file(path);
    DamConfig *c = &dc->cfg;
    c->loss.temperature = (float)json_opt_number(s, "temperature", 2.0);
    c->loss.kl = 1;
    c->loss.mse = (float)json_opt_number(s, "mse", 0);
    c->loss.entropy = (float)json_opt_number(s, "entropy", 0);
    c->loss.topk = json_opt_int(s, "topk", 0);
    c->similarity = (float)json_opt_number(s, "similarity", 0);
    c->l1 = (float)json_opt_number(s, "l1", 0);
    c->l2 = (float)json_opt_number(s, "l2", 0);
    c->overlap = (float)json_opt_number(s, "overlap", 0);
    c->include_base = json_opt_bool(s, "include_base", 0);
    c->embeddings = json_opt_bool(s, "embeddings", 1);
    c->norms = json_opt_bool(s, "norms", 1);
    const char *nl = json_opt_string(s, "nonlinearity", "none");
    c->nonlinearity = !strcmp(nl, "tanh")      ? NONLIN_TANH
                      : !strcmp(nl, "sigmoid") ? NONLIN_SIGMOID
                      : !strcmp(nl, "relu")    ? NONLIN_RELU
                                               : NONLIN_NONE;
    const cJSON *srcs = cJSON_GetObjectItemCaseSensitive(s, "sources");
    char *dirs[DAM_MAX_SOURCES];
    const char *names[DAM_MAX_SOURCES];
    int n = 0;
    for (int i = 0; i < cJSON_GetArraySize(srcs); i++) {
        names[n] = cJSON_GetArrayItem(srcs, i)->valuestring;
        dirs[n] = malloc(600);
        snprintf(dirs[n], 600, "%s/%s/%s", dir, name, names[n]);
        n++;
    }
    dc->n_data = n;
    if (c->include_base) {
        names[n] = json_opt_string(s, "base", "base");
        dirs[n] = malloc(600);
        snprintf(dirs[n], 600, "%s/%s/%s", dir, name, names[n]);
        n++;
    }
    dam_model_open_parallel(&dc->m, n, (const char *const *)dirs, names, test_be(), test_ctx(), tp, pp,
                            DAM_TRANSPORT_AUTO);
    for (int i = 0; i < n; i++) free(dirs[i]);
    cJSON_Delete(s);
    dc->m.nonlin = c->nonlinearity;
    for (int t = 0; t < dc->m.n_tensors; t++) {
        DamTensor *x = &dc->m.tensors[t];
        if (x->kind == DT_EMBED) x->trainable = c->embeddings;
        if (x->kind == DT_NORM) x->trainable = c->norms;
    }
    snprintf(path, sizeof path, "%s/%s/coef_init.safetensors", dir, name);
    output_load_coefficients(&dc->m, path);
    snprintf(path, sizeof path, "%s/%s/inputs.safetensors", dir, name);
    st_open(&dc->inputs, path);
    for (int k = 0; k < dc->n_data; k++) {
        char key[32];
        snprintf(key, sizeof key, "ids/%d", k);
        const StTensor *t = st_find(&dc->inputs, key);
        dc->ids[k] = t->data;
        dc->B = (int)t->shape[0], dc->T = (int)t->shape[1];
        snprintf(key, sizeof key, "mask/%d", k);
        dc->mask[k] = st_find(&dc->inputs, key)->data;
    }
    dc->rs = runstate_new(&dc->m, dc->n_data * dc->B, dc->T); /* room for every dataset in one batch */
    free(dir);
}

static inline void dam_case_open(DamCase *dc, const char *name, const char *variant) {
    dam_case_open_parallel(dc, name, variant, NULL, NULL);
}

static inline void dam_case_close(DamCase *dc) {
    runstate_free(dc->rs);
    st_close(&dc->inputs);
    dam_model_close(&dc->m);
}

typedef struct {
    double total, kl[DAM_MAX_SOURCES], mse[DAM_MAX_SOURCES], entropy[DAM_MAX_SOURCES];
    RegTerms reg;
} DamLosses;

/* The total loss at the current coefficients, gradients left in each tensor's grad. The batched
 * path is the trainer's own step (dam_step without the update: every dataset in one merged
 * forward/backward);
 * the other runs each dataset's micro-batch alone and must agree with it. */
static inline double dam_case_loss(DamCase *dc, DamLosses *out) {
    DamLosses l;
    memset(&l, 0, sizeof l);
    dam_model_refresh(&dc->m);
    if (dc->batched) {
        size_t seg = (size_t)dc->B * dc->T;
        int32_t *ids = malloc(dc->n_data * seg * sizeof(int32_t));
        int8_t *mask = malloc(dc->n_data * seg);
        int teacher[DAM_MAX_SOURCES];
        for (int k = 0; k < dc->n_data; k++) {
            memcpy(ids + k * seg, dc->ids[k], seg * sizeof(int32_t));
            memcpy(mask + k * seg, dc->mask[k], seg);
            teacher[k] = dc->base_teacher ? dc->m.n_coef_rows - 1 : k;
        }
        const int32_t *ids_p = ids;
        const int8_t *mask_p = mask;
        LossTerms terms[DAM_MAX_SOURCES];
        DamStep s = {.model = &dc->m,
                     .cfg = &dc->cfg,
                     .slots = &dc->rs,
                     .n_slots = 1,
                     .M = 1,
                     .n_seg = dc->n_data,
                     .B = dc->B,
                     .T = dc->T,
                     .global_mb = 1,
                     .teacher = teacher,
                     .ids = &ids_p,
                     .mask = &mask_p,
                     .loss = &dc->cfg.loss,
                     .backward = 1,
                     .update = 0, /* dL/dc only */
                     .terms = terms};
        StepStats st;
        dam_step(&s, 0, &st);
        free(ids), free(mask);
        for (int k = 0; k < dc->n_data; k++)
            l.kl[k] = st.kl[k], l.mse[k] = st.mse[k], l.entropy[k] = st.entropy[k];
        l.reg = st.reg, l.total = st.total;
    } else {
        LossTerms lt[DAM_MAX_SOURCES];
        dam_model_zero_grad(&dc->m);
        for (int k = 0; k < dc->n_data; k++) {
            MicroBatch mb = {.ids = dc->ids[k], .mask = dc->mask[k], .B = dc->B, .T = dc->T};
            lt[k] = dam_one_micro_batch(&dc->m, dc->rs, k, &mb, &dc->cfg.loss, 1);
            l.kl[k] = lt[k].kl, l.mse[k] = lt[k].mse, l.entropy[k] = lt[k].entropy;
            l.total += lt[k].kl + lt[k].mse + lt[k].entropy;
        }
        dam_model_reduce_grad(&dc->m);
        dam_model_finish_grad(&dc->m);
        reg_apply(&dc->m, &dc->cfg, &l.reg);
        l.total += reg_total(&l.reg);
    }
    if (out) *out = l;
    return l.total;
}

#endif
