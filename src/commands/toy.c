/* toy.c — `dam_dist toy`: a small base model, N specialists and their datasets, in the same
 * Hugging Face / HDF5 form real merges use, plus a ready config. Deterministic by seed.
 *
 * A specialist k is the base plus a perturbation concentrated on its own group of input columns
 * (column j belongs to group j mod N) — the structure DAM's per-column coefficients can express —
 * and a small perturbation elsewhere. Dataset k draws tokens from its own slice of the vocabulary
 * (Zipf-distributed) with some tokens from anywhere. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "dataset.h"
#include "hfconfig.h"
#include "outdir.h"
#include "safetensors.h"
#include "toy_tasks.h"
#include "tokenizer.h"
#include "toy_text.h"

typedef struct {
    const char *name;
    int d, layers, heads, kv, ffn, vocab, seq, rows, batch, steps;
    int tied; /* tie_word_embeddings: no lm_head.weight, the embedding is the output layer too */
} ToySize;

static const ToySize toy_sizes[] = {
    /* name    d    L   H  KV   F     V      seq  rows batch steps tied */
    {"small", 192, 4, 6, 2, 512, 2048, 128, 120, 2, 40, 0},
    {"tiny", 64, 2, 4, 2, 96, 256, 32, 48, 2, 12, 0},
    {"bench", 512, 15, 8, 4, 1536, 4096, 256, 24, 1, 4, 0}, /* ≈ 51M parameters */
    /* the SmolLM2-135M shape (134.5M parameters), for benchmarks on a real vocabulary; ≈ 270 MB of
     * bf16 per model */
    {"smol", 576, 30, 9, 3, 1536, 49152, 128, 8, 2, 4, 1},
};

/* toy --tasks: the randomly initialised character-level model the tasks' base is fine-tuned from */
static const ToySize tasks_size = {"tasks", 64, 2, 4, 2, 128, TOY_TASK_VOCAB, TOY_TASK_SEQ, 0, 0, 0, 0};

typedef struct {
    const ToySize *sz;
    int qwen3; /* --arch qwen3: Qwen3ForCausalLM, with a per-head q_norm / k_norm in every layer */
    int n_models;
    dam_rng rng;
    const char *out;
} Toy;

static void write_config_json(const Toy *t, const char *dir) {
    const ToySize *s = t->sz;
    char *json = dam_asprintf(
        "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",%s\n"
        "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
        "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n"
        "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-05,\n"
        "  \"rope_theta\": 10000.0,\n  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": %s,\n"
        "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n  \"bos_token_id\": 1,\n  \"eos_token_id\": "
        "2,\n"
        "  \"torch_dtype\": \"bfloat16\"\n}\n",
        t->qwen3 ? "Qwen3ForCausalLM" : "LlamaForCausalLM", t->qwen3 ? "qwen3" : "llama",
        t->qwen3 ? "\n  \"use_sliding_window\": false," : "", s->vocab, s->d, s->ffn, s->layers, s->heads,
        s->kv, s->d / s->heads, 4 * s->seq, s->tied ? "true" : "false");
    char *p = dam_path_join(dir, "config.json");
    dam_write_file_atomic(p, json, strlen(json));
    free(p), free(json);
}

/* One tensor of model `k` (-1 = base): base values from a fixed per-tensor seed, plus the
 * specialist's perturbation. */
static void toy_tensor(const Toy *t, int tensor_idx, int k, size_t rows, size_t cols, float std, float center,
                       float *out) {
    dam_rng base;
    dam_rng_seed(&base, t->rng.s ^ (0x1000u + (uint64_t)tensor_idx));
    for (size_t i = 0; i < rows * cols; i++) out[i] = center + std * dam_rng_normal(&base);
    if (k < 0) return;
    dam_rng spec;
    dam_rng_seed(&spec, t->rng.s ^ ((uint64_t)(k + 1) << 32) ^ (uint64_t)tensor_idx);
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++) {
            float scale = (int)(j % (size_t)t->n_models) == k ? 0.6f : 0.05f;
            out[r * cols + j] += scale * std * dam_rng_normal(&spec);
        }
}

static void write_model(const Toy *t, int k, const char *dir) {
    const ToySize *s = t->sz;
    dam_mkdir_p(dir);
    write_config_json(t, dir);
    StWriter *w = st_writer_new(dir, (size_t)1 << 40);
    size_t d = s->d, F = s->ffn, V = s->vocab, hd = d / s->heads, qd = s->heads * hd, kvd = s->kv * hd;
    float *buf = dam_malloc((V * d > F * d ? V * d : F * d) * sizeof(float), "toy tensor");
    int idx = 0;
    int64_t shape[2];
#define TOY_ADD(name, r, c, std, center, nd)                                                                 \
    do {                                                                                                     \
        toy_tensor(t, idx++, k, (r), (c), (std), (center), buf);                                             \
        shape[0] = (int64_t)(r), shape[1] = (int64_t)(c);                                                    \
        st_writer_add_f32(w, (name), DAM_BF16, (nd), (nd) == 1 ? &shape[1] : shape, buf);                    \
    } while (0)
    /* a tied embedding is also the output layer: scaled like an lm_head, so that logits stay moderate */
    TOY_ADD("model.embed_tokens.weight", V, d, s->tied ? 2.0f / sqrtf((float)d) : 1.0f, 0.0f, 2);
    char name[128];
    for (int l = 0; l < s->layers; l++) {
        const char *lin[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                             "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        size_t outs[] = {qd, kvd, kvd, d, F, F, d}, ins[] = {d, d, d, qd, d, d, F};
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        TOY_ADD(name, 1, d, 0.1f, 1.0f, 1);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        TOY_ADD(name, 1, d, 0.1f, 1.0f, 1);
        for (int i = 0; i < 7; i++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, lin[i]);
            TOY_ADD(name, outs[i], ins[i], 0.9f / sqrtf((float)ins[i]), 0.0f, 2);
        }
        for (int i = 0; t->qwen3 && i < 2; i++) { /* after the others: a Llama toy's stay as they were */
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", l, i ? "k_norm" : "q_norm");
            TOY_ADD(name, 1, hd, 0.1f, 1.0f, 1);
        }
    }
    TOY_ADD("model.norm.weight", 1, d, 0.1f, 1.0f, 1);
    if (!s->tied) TOY_ADD("lm_head.weight", V, d, 2.0f / sqrtf((float)d), 0.0f, 2);
#undef TOY_ADD
    free(buf);
    st_writer_finish(w, "pt");
}

/* Dataset k: Zipf over the k-th slice of the vocabulary, 20% of tokens uniform over all of it. */
static void write_dataset(const Toy *t, int k, const char *path, const char *tokenizer_hash) {
    const ToySize *s = t->sz;
    size_t n = (size_t)s->rows * s->seq;
    int32_t *ids = dam_malloc(n * sizeof(int32_t), "toy ids");
    dam_rng r;
    dam_rng_seed(&r, t->rng.s ^ (0xDA7Au + (uint64_t)k));
    int slice = s->vocab / t->n_models, lo = k * slice;
    for (size_t i = 0; i < n; i++) {
        if (dam_rng_uniform(&r) < 0.2f)
            ids[i] = (int32_t)(dam_rng_u64(&r) % (uint64_t)s->vocab);
        else
            ids[i] = lo + (int32_t)(powf(dam_rng_uniform(&r), 2.5f) * (float)slice) % slice;
    }
    /* ids of the models' tokenizer (toy_text.c), recorded so that the run compares it */
    DatasetAttr attrs[] = {{"source_file", "dam_dist toy", 0},
                           {"vocab_size", NULL, s->vocab},
                           {"tokenizer_hash", tokenizer_hash, 0},
                           {"tokenizer_hash_kind", TOKENIZER_HASH_KIND, 0}};
    dataset_write(path, s->rows, s->seq, ids, NULL, 4, attrs);
    free(ids);
}

static void write_run_config(const Toy *t) {
    const ToySize *s = t->sz;
    char models[2048] = "";
    for (int k = 0; k < t->n_models; k++) {
        char one[128];
        snprintf(one, sizeof one, "%s    {\"path\": \"m%d\", \"dataset\": \"data/m%d.h5\"}", k ? ",\n" : "",
                 k, k);
        strncat(models, one, sizeof models - strlen(models) - 1);
    }
    char *json = dam_asprintf(
        "{\n  \"base_model\": \"base\",\n  \"models\": [\n%s\n  ],\n"
        "  \"merge\": {\"embeddings\": true, \"norms\": true, \"include_base\": false, \"nonlinearity\": "
        "\"none\", "
        "\"init\": \"uniform\"},\n"
        "  \"loss\": {\"kl\": true, \"temperature\": 2.0, \"similarity\": 0.01},\n"
        "  \"train\": {\"optimizer\": \"adamw\", \"lr\": 0.02, \"schedule\": \"constant\", \"steps\": %d, "
        "\"batch_size\": %d, \"micro_batches\": 1, \"seq_len\": %d, \"max_grad_norm\": 1.0, \"seed\": 1},\n"
        "  \"output\": {\"dir\": \"merged\", \"shard_size\": \"5GB\"}\n}\n",
        models, s->steps, s->batch, s->seq);
    char *p = dam_path_join(t->out, "config.json");
    dam_write_file_atomic(p, json, strlen(json));
    free(p), free(json);
}

/* What lets a later `toy --out` replace this directory without --force. */
static void write_marker(const Toy *t, uint64_t seed) {
    char *json =
        dam_asprintf("{\"written_by\": \"dam_dist toy\", \"complete\": true, \"size\": \"%s\", "
                     "\"arch\": \"%s\", \"models\": %d, \"seed\": %llu}\n",
                     t->sz->name, t->qwen3 ? "qwen3" : "llama", t->n_models, (unsigned long long)seed);
    char *p = dam_path_join(t->out, "dam_toy.json");
    dam_write_file_atomic(p, json, strlen(json));
    free(p), free(json);
}

int cmd_toy(int argc, char **argv) {
    Toy t = {.sz = &toy_sizes[0], .n_models = 3, .out = NULL};
    uint64_t seed = 1;
    int force = 0, tasks = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            t.out = argv[++i];
        else if (!strcmp(argv[i], "--force"))
            force = 1;
        else if (!strcmp(argv[i], "--tasks"))
            tasks = 1;
        else if (!strcmp(argv[i], "--models") && i + 1 < argc)
            t.n_models = (int)dam_parse_int(argv[++i], 2, 8, "toy --models");
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = (uint64_t)dam_parse_int(argv[++i], 0, INT64_MAX, "toy --seed");
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) {
            const char *want = argv[++i];
            t.sz = NULL;
            for (size_t k = 0; k < sizeof toy_sizes / sizeof *toy_sizes; k++)
                if (!strcmp(want, toy_sizes[k].name)) t.sz = &toy_sizes[k];
            if (!t.sz) dam_fail("toy: unknown --size '%s' (small, tiny, bench, smol)", want);
        } else if (!strcmp(argv[i], "--arch") && i + 1 < argc) {
            const char *want = argv[++i];
            if (strcmp(want, "llama") != 0 && strcmp(want, "qwen3") != 0)
                dam_fail("toy: unknown --arch '%s' (llama, qwen3)", want);
            t.qwen3 = !strcmp(want, "qwen3");
        } else
            cli_bad_option("toy", argv[i], "--out --models --seed --size --arch");
    }
    if (!t.out) dam_fail("toy: --out DIR is required");
    if (tasks) t.sz = &tasks_size, t.n_models = 0;
    const char *final = t.out;
    OutDir od = {.dir = final,
                 .what = "toy --out",
                 .written_by = "dam_dist toy",
                 .marker = "dam_toy.json",
                 .force = force};
    char *tmp = outdir_begin(&od); /* built aside, swapped into place when complete */
    t.out = tmp;
    dam_rng_seed(&t.rng, seed);
    char *sub = dam_path_join(t.out, "base");
    write_model(&t, -1, sub);
    free(sub);
    if (tasks) {
        toy_tasks_write(t.out, seed);
        write_marker(&t, seed);
        outdir_commit(&od, tmp);
        free(tmp);
        printf("toy: wrote %s: a random character-level base (%s) and the tasks add, rev, sort and their mix "
               "(data/<task>_train.h5, data/<task>_eval.h5)\n",
               final, t.sz->name);
        return 0;
    }
    char *dirs[1 + 8];
    dirs[0] = dam_path_join(t.out, "base");
    for (int k = 0; k < t.n_models; k++) {
        char name[32];
        snprintf(name, sizeof name, "m%d", k);
        dirs[1 + k] = dam_path_join(t.out, name);
        write_model(&t, k, dirs[1 + k]);
    }
    /* a tokenizer for every model and text to prepare with it (the weights above do not depend on it) */
    char hash[17];
    toy_text_write(t.out, t.n_models, t.sz->rows, t.sz->vocab, seed, (const char *const *)dirs,
                   1 + t.n_models, hash);
    for (int k = 0; k <= t.n_models; k++) free(dirs[k]);
    char *data = dam_path_join(t.out, "data");
    dam_mkdir_p(data);
    for (int k = 0; k < t.n_models; k++) {
        char name[32];
        snprintf(name, sizeof name, "m%d.h5", k);
        sub = dam_path_join(data, name);
        write_dataset(&t, k, sub, hash);
        free(sub);
    }
    free(data);
    write_run_config(&t);
    ModelConfig mc;
    char *cfgp = dam_asprintf("%s/base/config.json", t.out);
    hfconfig_load(&mc, cfgp);
    free(cfgp);
    write_marker(&t, seed);
    outdir_commit(&od, tmp);
    free(tmp);
    t.out = final;
    printf("toy: wrote %s: base + %d specialists (%s, %.2fM parameters each, bf16, a byte-level BPE "
           "tokenizer of "
           "%d tokens), datasets of %d x %d tokens (data/m<k>.h5), text to prepare (text/m<k>.jsonl), "
           "config.json\n",
           t.out, t.n_models, t.sz->name, hfconfig_num_params(&mc) / 1e6, t.sz->vocab, t.sz->rows, t.sz->seq);
    return 0;
}
