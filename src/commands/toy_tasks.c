/* toy_tasks.c — see toy_tasks.h. Three tasks that one small model can learn and that pull its weights
 * in different directions (the same letters go to reversal and to sorting, told apart only by the
 * first character; no train row repeats an eval row):
 *   add   two numbers below 100 and their sum:      "12+35=47"
 *   rev   3 to 5 letters and the letters reversed:  "Rcab=bac"
 *   sort  3 to 5 letters and the letters sorted:    "Scab=abc"
 * A row is <s> text </s> padded with <pad> to TOY_TASK_SEQ tokens; its answer tokens are the
 * characters after '=' and the </s>. The tokenizer is a BPE over single characters without merges,
 * which src/tokenizer/ reads (and `prepare` uses) like any Hugging Face tokenizer.json. */
#include "toy_tasks.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "tokenizer.h"
#include "util.h"

enum { PAD = 0, BOS = 1, EOS = 2, TRAIN_ROWS = 4000, EVAL_ROWS = 256 };

/* id -> token: the specials, then one character each (the last five unused by the tasks). */
static const char *const vocab[TOY_TASK_VOCAB] = {
    "<pad>", "<s>", "</s>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "=", "R",
    "S",     "a",   "b",    "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o",
    "p",     "q",   "r",    "s", "t", "u", "v", "w", "x", "y", "z", " ", "-", "*", "(", ")"};
enum { N_SPECIAL = 3 };

typedef enum { TASK_ADD, TASK_REV, TASK_SORT, N_TASKS } TaskKind;
static const char *const task_names[N_TASKS] = {"add", "rev", "sort"};

static int32_t char_id(char c) {
    for (int i = N_SPECIAL; i < TOY_TASK_VOCAB; i++)
        if (vocab[i][0] == c) return i;
    dam_fail("toy --tasks: character '%c' is not in the vocabulary", c);
}

static int cmp_char(const void *a, const void *b) { return *(const char *)a - *(const char *)b; }

/* One example of task k. */
static void task_text(TaskKind k, dam_rng *r, char *out, size_t cap) {
    if (k == TASK_ADD) {
        int a = (int)(dam_rng_u64(r) % 100), b = (int)(dam_rng_u64(r) % 100);
        snprintf(out, cap, "%d+%d=%d", a, b, a + b);
        return;
    }
    char s[8], t[8];
    int n = 3 + (int)(dam_rng_u64(r) % 3);
    for (int i = 0; i < n; i++) s[i] = (char)('a' + dam_rng_u64(r) % 26);
    for (int i = 0; i < n; i++) t[i] = k == TASK_REV ? s[n - 1 - i] : s[i];
    if (k == TASK_SORT) qsort(t, (size_t)n, 1, cmp_char);
    s[n] = t[n] = 0;
    snprintf(out, cap, "%c%s=%s", k == TASK_REV ? 'R' : 'S', s, t);
}

typedef struct {
    int32_t *ids;
    int8_t *mask, *answer;
    int64_t n;
} Rows;

static void rows_alloc(Rows *rows, int64_t n) {
    size_t len = (size_t)n * TOY_TASK_SEQ;
    rows->ids = dam_calloc(len, sizeof(int32_t), "toy task rows"); /* <pad> = 0 */
    rows->mask = dam_calloc(len, 1, "toy task rows");
    rows->answer = dam_calloc(len, 1, "toy task rows");
    rows->n = n;
}

static void rows_free(Rows *rows) { free(rows->ids), free(rows->mask), free(rows->answer); }

/* Row i of rows from text: <s> text </s>, answers after '=' and the </s>. */
static void put_row(Rows *rows, int64_t i, const char *text) {
    int32_t *ids = rows->ids + i * TOY_TASK_SEQ;
    int8_t *mask = rows->mask + i * TOY_TASK_SEQ, *ans = rows->answer + i * TOY_TASK_SEQ;
    int n = (int)strlen(text), after = 0;
    if (n + 2 > TOY_TASK_SEQ) dam_fail("toy --tasks: '%s' does not fit %d tokens", text, TOY_TASK_SEQ);
    ids[0] = BOS, mask[0] = 1;
    for (int c = 0; c < n; c++) {
        ids[c + 1] = char_id(text[c]), mask[c + 1] = 1, ans[c + 1] = (int8_t)after;
        after |= text[c] == '=';
    }
    ids[n + 1] = EOS, mask[n + 1] = 1, ans[n + 1] = 1;
}

static void write_rows(const Rows *rows, const char *dir, const char *name, const char *hash) {
    char *path = dam_asprintf("%s/data/%s.h5", dir, name);
    DatasetAttr attrs[] = {{"source_file", "dam_dist toy --tasks", 0},
                           {"vocab_size", NULL, TOY_TASK_VOCAB},
                           {"tokenizer_hash", hash, 0},
                           {"tokenizer_hash_kind", TOKENIZER_HASH_KIND, 0}};
    dataset_write(path, rows->n, TOY_TASK_SEQ, rows->ids, rows->mask, 4, attrs);
    dataset_write_answer(path, rows->answer);
    free(path);
}

/* base/tokenizer.json: BPE over the characters, no merges, the specials as added tokens; and
 * tokenizer_config.json making prepare add <s> and </s> and pad with <pad>. */
static void write_tokenizer(const char *dir) {
    cJSON *root = cJSON_CreateObject(), *added = cJSON_CreateArray(), *model = cJSON_CreateObject();
    cJSON *v = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    for (int i = 0; i < TOY_TASK_VOCAB; i++) {
        cJSON_AddNumberToObject(v, vocab[i], i);
        if (i >= N_SPECIAL) continue;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", vocab[i]);
        cJSON_AddBoolToObject(a, "single_word", 0), cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0), cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer"), cJSON_AddNullToObject(root, "pre_tokenizer");
    cJSON_AddNullToObject(root, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "Fuse");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddItemToObject(model, "vocab", v);
    cJSON_AddItemToObject(model, "merges", cJSON_CreateArray());
    cJSON_AddItemToObject(root, "model", model);
    char *text = cJSON_Print(root), *path = dam_asprintf("%s/base/tokenizer.json", dir);
    dam_write_file_atomic(path, text, strlen(text));
    free(text), free(path);
    cJSON_Delete(root);
    static const char config[] = "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"pad_token\": "
                                 "\"<pad>\",\n  \"add_bos_token\": true,\n  \"add_eos_token\": true\n}\n";
    path = dam_asprintf("%s/base/tokenizer_config.json", dir);
    dam_write_file_atomic(path, config, strlen(config));
    free(path);
}

/* The texts of one split of a task, sorted: the eval rows that the train rows must not repeat. */
typedef struct {
    char (*text)[TOY_TASK_SEQ];
    int64_t n;
} TextSet;

static int cmp_text(const void *a, const void *b) { return strcmp(a, b); }

static int text_in(const TextSet *set, const char *text) {
    return set && bsearch(text, set->text, (size_t)set->n, sizeof *set->text, cmp_text) != NULL;
}

/* Rows of every task (n each) from one generator, none of them in exclude[task] (when given), their
 * texts into keep[task] (when given); and the mix: the same rows in a seeded order. */
static void write_split(const char *dir, const char *split, int64_t n, dam_rng *r, const char *hash,
                        const TextSet *exclude, TextSet *keep) {
    Rows task[N_TASKS], mix;
    rows_alloc(&mix, n * N_TASKS);
    char text[32], name[32];
    for (int k = 0; k < N_TASKS; k++) {
        rows_alloc(&task[k], n);
        if (keep) keep[k].text = dam_calloc((size_t)n, sizeof *keep[k].text, "toy eval texts"), keep[k].n = n;
        for (int64_t i = 0; i < n; i++) {
            do task_text((TaskKind)k, r, text, sizeof text);
            while (exclude && text_in(&exclude[k], text));
            put_row(&task[k], i, text);
            if (keep) memcpy(keep[k].text[i], text, strlen(text) + 1); /* put_row: it fits */
        }
        if (keep) qsort(keep[k].text, (size_t)n, sizeof *keep[k].text, cmp_text);
        snprintf(name, sizeof name, "%s_%s", task_names[k], split);
        write_rows(&task[k], dir, name, hash);
    }
    int64_t *order = dam_malloc((size_t)mix.n * sizeof(int64_t), "toy mix order");
    for (int64_t i = 0; i < mix.n; i++) order[i] = i;
    for (int64_t i = mix.n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)(dam_rng_u64(r) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    size_t L = TOY_TASK_SEQ;
    for (int64_t i = 0; i < mix.n; i++) {
        const Rows *from = &task[order[i] % N_TASKS];
        int64_t row = order[i] / N_TASKS;
        memcpy(mix.ids + i * L, from->ids + row * L, L * sizeof(int32_t));
        memcpy(mix.mask + i * L, from->mask + row * L, L);
        memcpy(mix.answer + i * L, from->answer + row * L, L);
    }
    snprintf(name, sizeof name, "mix_%s", split);
    write_rows(&mix, dir, name, hash);
    for (int k = 0; k < N_TASKS; k++) rows_free(&task[k]);
    rows_free(&mix);
    free(order);
}

void toy_tasks_write(const char *dir, uint64_t seed) {
    write_tokenizer(dir);
    char *tok = dam_asprintf("%s/base/tokenizer.json", dir), hash[32];
    uint64_t h;
    if (tokenizer_canonical_hash(tok, &h) != 0) dam_fail("%s: cannot fingerprint the tokenizer", tok);
    free(tok);
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)h);
    char *data = dam_path_join(dir, "data");
    dam_mkdir_p(data);
    free(data);
    dam_rng r;
    dam_rng_seed(&r, seed ^ 0x7A5C5u);
    TextSet eval[N_TASKS];
    write_split(dir, "eval", EVAL_ROWS, &r, hash, NULL, eval);
    write_split(dir, "train", TRAIN_ROWS, &r, hash, eval, NULL); /* no eval row trained on */
    for (int k = 0; k < N_TASKS; k++) free(eval[k].text);
}
