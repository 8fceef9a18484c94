/* toy_text.c — see toy_text.h. The texts are sentences of made-up words ("Bako tiru vemo."): a lexicon
 * of WORDS_PER_SOURCE words per specialist, specialist k writing 80 % of its words from its own part
 * (Zipf-distributed) and 20 % from anywhere. The tokenizer is trained on all of them as the
 * `tokenizers` library's BpeTrainer would, on GPT-2's pre-tokenization: repeatedly the most frequent
 * adjacent pair (ties: the smallest ids) becomes a token, until the vocabulary is full or no pair occurs
 * twice; what is left is filled with <unused_N> tokens, which no text produces. */
#include "toy_text.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

enum { N_SPECIAL = 3, WORDS_PER_SOURCE = 48, WORD_MAX = 16 };
static const char *const specials[N_SPECIAL] = {"<pad>", "<s>", "</s>"};

typedef struct {
    char *s;
    size_t n, cap;
} Str;

static void str_add(Str *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1) + 256;
        b->s = dam_realloc(b->s, b->cap, "toy text");
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* ---------------------------------------------------------------- the texts */

static void make_word(dam_rng *r, char *out) {
    static const char cons[] = "bcdfghklmnprstvz", vow[] = "aeiou";
    int syllables = 1 + (int)(dam_rng_u64(r) % 3), n = 0;
    for (int s = 0; s < syllables; s++) {
        out[n++] = cons[dam_rng_u64(r) % 16];
        out[n++] = vow[dam_rng_u64(r) % 5];
    }
    if (dam_rng_u64(r) % 2) out[n++] = cons[dam_rng_u64(r) % 16];
    out[n] = 0;
}

/* One document of specialist k: 2 to 4 sentences of 4 to 9 words. */
static void make_doc(dam_rng *r, char (*lexicon)[WORD_MAX], int n_models, int k, Str *out) {
    int sentences = 2 + (int)(dam_rng_u64(r) % 3);
    for (int s = 0; s < sentences; s++) {
        int words = 4 + (int)(dam_rng_u64(r) % 6);
        for (int w = 0; w < words; w++) {
            int idx;
            if (dam_rng_uniform(r) < 0.2f)
                idx = (int)(dam_rng_u64(r) % (uint64_t)(WORDS_PER_SOURCE * n_models));
            else
                idx = k + n_models *
                              ((int)(powf(dam_rng_uniform(r), 2.5f) * WORDS_PER_SOURCE) % WORDS_PER_SOURCE);
            char word[WORD_MAX + 1];
            const char *sep = s == 0 && w == 0 ? "" : " ";
            snprintf(word, sizeof word, "%s%s", sep, lexicon[idx]);
            if (w == 0) word[strlen(sep)] = (char)(word[strlen(sep)] - 'a' + 'A'); /* a capital first */
            str_add(out, word, strlen(word));
        }
        str_add(out, ".", 1);
    }
}

/* ---------------------------------------------------------------- the tokenizer */

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for 256 + n. */
static int byte_prints(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static uint32_t byte_char(int b) {
    if (byte_prints(b)) return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++) n += !byte_prints(c);
    return 256u + (uint32_t)n;
}

/* Bytes that valid UTF-8 never holds (prepare and tokenize refuse invalid UTF-8). */
static int byte_in_utf8(int b) { return b != 0xC0 && b != 0xC1 && b < 0xF5; }

typedef struct {
    int32_t *ids;
    int len;
    int64_t count;
} Word;

typedef struct {
    char **tok; /* id -> byte-level string */
    int n_tok, cap;
    int32_t byte_id[256];
    Word *words; /* the distinct pre-tokens of the texts */
    int n_words;
    int32_t (*merges)[2];
    int n_merges;
} Bpe;

static int32_t bpe_add_token(Bpe *b, char *s) {
    for (int i = N_SPECIAL; i < b->n_tok; i++) /* two merges may spell the same string */
        if (!strcmp(b->tok[i], s)) {
            free(s);
            return i;
        }
    b->tok[b->n_tok] = s;
    return b->n_tok++;
}

/* GPT-2's pre-tokenization on these texts (letters, spaces, '.'): " ?letters", " ?other", spaces. */
static void bpe_count_words(Bpe *b, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t start = i;
        if (s[i] == ' ' && i + 1 < n && s[i + 1] != ' ') i++;
        int letters = (s[i] | 32) >= 'a' && (s[i] | 32) <= 'z';
        if (s[i] == ' ')
            while (i < n && s[i] == ' ') i++;
        else
            while (i < n && s[i] != ' ' && (((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z') == letters)) i++;
        size_t len = i - start;
        int w = 0;
        for (; w < b->n_words; w++) {
            const Word *x = &b->words[w];
            if ((size_t)x->len != len) continue;
            size_t j = 0;
            while (j < len && x->ids[j] == b->byte_id[(unsigned char)s[start + j]]) j++;
            if (j == len) break;
        }
        if (w == b->n_words) {
            b->words = dam_realloc(b->words, (size_t)(b->n_words + 1) * sizeof *b->words, "toy words");
            Word *x = &b->words[b->n_words++];
            x->ids = dam_malloc(len * sizeof(int32_t), "toy word"), x->len = (int)len, x->count = 0;
            for (size_t j = 0; j < len; j++) x->ids[j] = b->byte_id[(unsigned char)s[start + j]];
        }
        b->words[w].count++;
    }
}

/* Merges until the vocabulary holds `vocab` tokens or no pair occurs twice. */
static void bpe_train(Bpe *b, int vocab) {
    size_t symbols = 0;
    for (int w = 0; w < b->n_words; w++) symbols += (size_t)b->words[w].len;
    size_t cap = 64;
    while (cap < 2 * symbols) cap *= 2;
    uint64_t *keys = dam_malloc(cap * sizeof *keys, "toy pairs");
    int64_t *counts = dam_malloc(cap * sizeof *counts, "toy pairs");
    b->merges = dam_malloc((size_t)vocab * sizeof *b->merges, "toy merges");
    while (b->n_tok < vocab) {
        memset(keys, 0xff, cap * sizeof *keys);
        for (int w = 0; w < b->n_words; w++) {
            const Word *x = &b->words[w];
            for (int j = 0; j + 1 < x->len; j++) {
                uint64_t key = (uint64_t)x->ids[j] << 32 | (uint32_t)x->ids[j + 1];
                size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
                while (keys[h] != UINT64_MAX && keys[h] != key) h = (h + 1) & (cap - 1);
                if (keys[h] == UINT64_MAX) keys[h] = key, counts[h] = 0;
                counts[h] += x->count;
            }
        }
        uint64_t best = UINT64_MAX;
        int64_t best_count = 1;
        for (size_t h = 0; h < cap; h++)
            if (keys[h] != UINT64_MAX &&
                (counts[h] > best_count || (counts[h] == best_count && keys[h] < best)))
                best = keys[h], best_count = counts[h];
        if (best == UINT64_MAX) break; /* no pair occurs twice */
        int32_t a = (int32_t)(best >> 32), c = (int32_t)(best & 0xffffffffu);
        int32_t id = bpe_add_token(b, dam_asprintf("%s%s", b->tok[a], b->tok[c]));
        b->merges[b->n_merges][0] = a, b->merges[b->n_merges][1] = c, b->n_merges++;
        for (int w = 0; w < b->n_words; w++) {
            Word *x = &b->words[w];
            int o = 0;
            for (int j = 0; j < x->len; j++)
                if (j + 1 < x->len && x->ids[j] == a && x->ids[j + 1] == c)
                    x->ids[o++] = id, j++;
                else
                    x->ids[o++] = x->ids[j];
            x->len = o;
        }
    }
    free(keys), free(counts);
}

static cJSON *special_item(const char *id) {
    cJSON *o = cJSON_CreateObject(),
          *sp = cJSON_AddObjectToObject(o, id[0] == '$' ? "Sequence" : "SpecialToken");
    cJSON_AddStringToObject(sp, "id", id[0] == '$' ? id + 1 : id);
    cJSON_AddNumberToObject(sp, "type_id", 0);
    return o;
}

static char *bpe_json(const Bpe *b) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation"), cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < N_SPECIAL; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "single_word", 0), cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0), cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0), cJSON_AddBoolToObject(pre, "trim_offsets", 1);
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    /* <s> text </s>, as prepare and transformers add them */
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(post, "single"), *pair = cJSON_AddArrayToObject(post, "pair");
    const char *const one[] = {"<s>", "$A", "</s>"}, *const two[] = {"<s>", "$A", "</s>", "$B", "</s>"};
    for (int i = 0; i < 3; i++) cJSON_AddItemToArray(single, special_item(one[i]));
    for (int i = 0; i < 5; i++) cJSON_AddItemToArray(pair, special_item(two[i]));
    cJSON *sp = cJSON_AddObjectToObject(post, "special_tokens");
    for (int i = 1; i < N_SPECIAL; i++) {
        cJSON *t = cJSON_AddObjectToObject(sp, specials[i]);
        cJSON_AddStringToObject(t, "id", specials[i]);
        cJSON_AddItemToObject(t, "ids", cJSON_CreateIntArray(&i, 1));
        cJSON_AddItemToObject(t, "tokens", cJSON_CreateStringArray(&specials[i], 1));
    }
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", 1), cJSON_AddBoolToObject(dec, "trim_offsets", 1);
    cJSON_AddBoolToObject(dec, "use_regex", 1);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout"), cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix"),
        cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0), cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *v = cJSON_AddObjectToObject(model, "vocab");
    for (int i = 0; i < b->n_tok; i++) cJSON_AddNumberToObject(v, b->tok[i], i);
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (int i = 0; i < b->n_merges; i++) {
        char *m = dam_asprintf("%s %s", b->tok[b->merges[i][0]], b->tok[b->merges[i][1]]);
        cJSON_AddItemToArray(merges, cJSON_CreateString(m));
        free(m);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) dam_fail("toy: out of memory writing tokenizer.json");
    return text;
}

void toy_text_write(const char *dir, int n_models, int docs, int vocab, uint64_t seed,
                    const char *const *model_dirs, int n_dirs, char *hash_hex) {
    dam_rng r;
    dam_rng_seed(&r, seed ^ 0x7E47u);
    int n_lex = WORDS_PER_SOURCE * n_models;
    char(*lexicon)[WORD_MAX] = dam_calloc((size_t)n_lex, WORD_MAX, "toy lexicon");
    for (int i = 0; i < n_lex; i++) make_word(&r, lexicon[i]);

    Bpe b = {.cap = vocab};
    b.tok = dam_calloc((size_t)vocab, sizeof *b.tok, "toy vocabulary");
    for (int i = 0; i < N_SPECIAL; i++) b.tok[b.n_tok++] = dam_strdup(specials[i]);
    for (int c = 0; c < 256; c++) {
        b.byte_id[c] = -1;
        if (!byte_in_utf8(c)) continue;
        char s[5] = {0};
        tok_utf8_encode(byte_char(c), s);
        if (b.n_tok == vocab) dam_fail("toy: a vocabulary of %d cannot hold the 243 bytes of UTF-8", vocab);
        b.byte_id[c] = b.n_tok;
        b.tok[b.n_tok++] = dam_strdup(s);
    }

    char *text_dir = dam_path_join(dir, "text");
    dam_mkdir_p(text_dir);
    Str doc = {0}, file = {0};
    for (int k = 0; k < n_models; k++) {
        file.n = 0;
        for (int d = 0; d < docs; d++) {
            doc.n = 0;
            make_doc(&r, lexicon, n_models, k, &doc);
            bpe_count_words(&b, doc.s, doc.n);
            str_add(&file, "{\"text\": \"", 10); /* letters, spaces and '.': nothing to escape */
            str_add(&file, doc.s, doc.n);
            str_add(&file, "\"}\n", 3);
        }
        char *p = dam_asprintf("%s/m%d.jsonl", text_dir, k);
        dam_write_file_atomic(p, file.s, file.n);
        free(p);
    }
    free(doc.s), free(file.s), free(text_dir), free(lexicon);

    bpe_train(&b, vocab);
    for (int i = 0; b.n_tok < vocab; i++) b.tok[b.n_tok++] = dam_asprintf("<unused_%d>", i);
    char *json = bpe_json(&b);
    static const char config_fmt[] =
        "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"pad_token\": "
        "\"<pad>\",\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";
    for (int i = 0; i < n_dirs; i++) {
        char *p = dam_path_join(model_dirs[i], "tokenizer.json");
        dam_write_file_atomic(p, json, strlen(json));
        free(p);
        p = dam_path_join(model_dirs[i], "tokenizer_config.json");
        dam_write_file_atomic(p, config_fmt, strlen(config_fmt));
        free(p);
    }
    free(json);
    char *tok = dam_path_join(model_dirs[0], "tokenizer.json");
    uint64_t h;
    if (tokenizer_canonical_hash(tok, &h) != 0) dam_fail("%s: cannot fingerprint the tokenizer", tok);
    free(tok);
    snprintf(hash_hex, 17, "%016llx", (unsigned long long)h);
    for (int i = 0; i < b.n_tok; i++) free(b.tok[i]);
    for (int w = 0; w < b.n_words; w++) free(b.words[w].ids);
    free(b.tok), free(b.words), free(b.merges);
}
