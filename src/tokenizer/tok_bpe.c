/* tok_bpe.c — the BPE model: vocabulary and merge hash tables, the per-word merge loop and the
 * word cache.
 *
 * The merge loop is the one `tokenizers` runs (models/bpe/word.rs): every adjacent pair that has a
 * merge goes into a min-heap keyed by (rank, position); the top is applied unless it went stale
 * (one side was merged away), and the new symbol's pairs with its neighbours are pushed. Equal ranks
 * resolve leftmost first, which is what makes "aaa" come out as "aa a". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = dam_hash64(s, n, 0);
    return h ? h : 1; /* 0 marks an empty cache slot */
}

static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

/* ---------------------------------------------------------------- vocabulary */

void tok_vocab_build(Tokenizer *t) {
    size_t cap = table_size((size_t)t->n_ids);
    t->vocab.slots = dam_malloc(cap * sizeof(int32_t), "tokenizer vocabulary index");
    memset(t->vocab.slots, 0xff, cap * sizeof(int32_t));
    t->vocab.mask = cap - 1;
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (!t->tokens[id]) continue;
        size_t i = hash_bytes(t->tokens[id], t->token_len[id]) & t->vocab.mask;
        while (t->vocab.slots[i] >= 0) i = (i + 1) & t->vocab.mask;
        t->vocab.slots[i] = id;
    }
}

int32_t tok_vocab_find(const Tokenizer *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->vocab.mask;
    for (;;) {
        int32_t id = t->vocab.slots[i];
        if (id < 0) return -1;
        if (t->token_len[id] == n && memcmp(t->tokens[id], s, n) == 0) return id;
        i = (i + 1) & t->vocab.mask;
    }
}

/* ---------------------------------------------------------------- merges */

static uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)(left + 1) << 32) | (uint32_t)(right + 1);
}

static size_t pair_slot(const TokMergeTable *m, uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & m->mask;
}

void tok_merges_init(TokMergeTable *m, size_t n_merges) {
    size_t cap = table_size(n_merges);
    m->keys = dam_calloc(cap, sizeof *m->keys, "tokenizer merges");
    m->rank = dam_malloc(cap * sizeof *m->rank, "tokenizer merges");
    m->merged = dam_malloc(cap * sizeof *m->merged, "tokenizer merges");
    m->mask = cap - 1;
}

void tok_merges_add(TokMergeTable *m, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = pair_key(left, right);
    size_t i = pair_slot(m, key);
    while (m->keys[i] && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == key) return; /* a repeated merge keeps its first (best) rank, as tokenizers does */
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

/* Rank of merging (left, right), -1 when there is no such merge; *merged gets the new id. */
static int32_t merge_find(const TokMergeTable *m, int32_t left, int32_t right, int32_t *merged) {
    uint64_t key = pair_key(left, right);
    size_t i = pair_slot(m, key);
    while (m->keys[i]) {
        if (m->keys[i] == key) {
            *merged = m->merged[i];
            return m->rank[i];
        }
        i = (i + 1) & m->mask;
    }
    return -1;
}

void tok_merges_free(TokMergeTable *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- word cache */

#define CACHE_SLOTS (1u << 16)
#define CACHE_MAX_WORD 256 /* longer pre-tokens are rare and not worth keeping */

void tok_cache_init(TokWordCache *c) {
    memset(c, 0, sizeof *c);
    c->mask = CACHE_SLOTS - 1;
    c->hash = dam_calloc(CACHE_SLOTS, sizeof *c->hash, "word cache");
    c->key_off = dam_malloc(CACHE_SLOTS * sizeof *c->key_off, "word cache");
    c->key_len = dam_malloc(CACHE_SLOTS * sizeof *c->key_len, "word cache");
    c->ids_off = dam_malloc(CACHE_SLOTS * sizeof *c->ids_off, "word cache");
    c->ids_len = dam_malloc(CACHE_SLOTS * sizeof *c->ids_len, "word cache");
}

void tok_cache_free(TokWordCache *c) {
    free(c->hash);
    free(c->key_off);
    free(c->key_len);
    free(c->ids_off);
    free(c->ids_len);
    free(c->keys.data);
    tokids_free(&c->ids);
    memset(c, 0, sizeof *c);
}

static void cache_clear(TokWordCache *c) {
    memset(c->hash, 0, (c->mask + 1) * sizeof *c->hash);
    c->count = 0;
    c->keys.n = 0;
    c->ids.n = 0;
}

/* Slot of the word: its entry when present (hash[slot] != 0), else the empty slot to fill. */
static size_t cache_slot(const TokWordCache *c, uint64_t h, const char *w, size_t n) {
    size_t i = (size_t)h & c->mask;
    while (c->hash[i]) {
        if (c->hash[i] == h && c->key_len[i] == n && memcmp(c->keys.data + c->key_off[i], w, n) == 0) break;
        i = (i + 1) & c->mask;
    }
    return i;
}

/* ---------------------------------------------------------------- the merge loop */

typedef TokSymbol Symbol;
typedef TokCandidate Candidate;

static int cand_less(const Candidate *a, const Candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

typedef TokHeap Heap;

static void heap_push(Heap *h, Candidate c) {
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->items = dam_realloc(h->items, h->cap * sizeof *h->items, "BPE heap");
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_less(&c, &h->items[parent])) break;
        h->items[i] = h->items[parent];
        i = parent;
    }
    h->items[i] = c;
}

static Candidate heap_pop(Heap *h) {
    Candidate top = h->items[0], last = h->items[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const Candidate *bc = &last;
        if (l < h->n && cand_less(&h->items[l], bc)) {
            best = l;
            bc = &h->items[l];
        }
        if (r < h->n && cand_less(&h->items[r], bc)) best = r;
        if (best == i) break;
        h->items[i] = h->items[best];
        i = best;
    }
    if (h->n) h->items[i] = last;
    return top;
}

static void push_pair(const TokMergeTable *m, Heap *h, const Symbol *s, int32_t pos) {
    int32_t next = s[pos].next, merged;
    if (next < 0) return;
    int32_t rank = merge_find(m, s[pos].id, s[next].id, &merged);
    if (rank >= 0) heap_push(h, (Candidate){rank, pos, merged});
}

/* Merge the symbols in place; the survivors, in order, are the word's ids. */
static void merge_symbols(const TokMergeTable *m, Symbol *s, int32_t n, Heap *h) {
    h->n = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(m, h, s, i);
    while (h->n) {
        Candidate c = heap_pop(h);
        Symbol *left = &s[c.pos];
        if (!left->alive || left->next < 0) continue;
        Symbol *right = &s[left->next];
        int32_t merged;
        if (merge_find(m, left->id, right->id, &merged) < 0 || merged != c.merged) continue; /* stale */
        left->id = merged;
        right->alive = 0;
        left->next = right->next;
        if (right->next >= 0) s[right->next].prev = c.pos;
        if (left->prev >= 0) push_pair(m, h, s, left->prev);
        push_pair(m, h, s, c.pos);
    }
}

/* Initial symbols of a word: one per character (byte-level: per byte), with byte fallback and
 * <unk> handling as tokenizers' BPE::merge_word does. */
static const char *initial_symbols(Tokenizer *t, const char *w, size_t n, Symbol **syms, size_t *cap,
                                   int32_t *count) {
    int32_t k = 0;
    int32_t unk_pending = 0; /* a pending (possibly fused) <unk> */
    if (*cap < n + 1) {
        *cap = n + 16;
        *syms = dam_realloc(*syms, *cap * sizeof **syms, "BPE symbols");
    }
    Symbol *s = *syms;
#define ADD(ID) (s[k] = (Symbol){(ID), k - 1, k + 1, 1}, k++)
    size_t i = 0;
    while (i < n) {
        size_t len = 1;
        int32_t id;
        uint32_t cp = (unsigned char)w[i];
        if (t->byte_level)
            id = t->byte_level_id[(unsigned char)w[i]];
        else {
            cp = tok_utf8_decode(w + i, &len);
            id = tok_vocab_find(t, w + i, len);
        }
        if (id >= 0) {
            if (unk_pending) {
                ADD(t->unk_id);
                unk_pending = 0;
            }
            ADD(id);
        } else {
            int fell_back = 0;
            if (t->byte_fallback) {
                fell_back = 1;
                for (size_t b = 0; b < len; b++) fell_back &= t->byte_token[(unsigned char)w[i + b]] >= 0;
                if (fell_back)
                    for (size_t b = 0; b < len; b++) ADD(t->byte_token[(unsigned char)w[i + b]]);
            }
            if (!fell_back) {
                if (t->unk_id < 0) {
                    /* name it: a trailing newline (U+000A) is the usual culprit */
                    if (t->byte_level)
                        snprintf(
                            t->err, sizeof t->err,
                            "the byte 0x%02X is not in the vocabulary and the tokenizer has no unk_token",
                            (unsigned)cp);
                    else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0) || cp == ' ')
                        snprintf(t->err, sizeof t->err,
                                 "the character U+%04X is not in the vocabulary and the tokenizer has no "
                                 "unk_token",
                                 (unsigned)cp);
                    else
                        snprintf(
                            t->err, sizeof t->err,
                            "the character '%.*s' (U+%04X) is not in the vocabulary and the tokenizer has no "
                            "unk_token",
                            (int)len, w + i, (unsigned)cp);
                    return t->err;
                }
                if (unk_pending && !t->fuse_unk) ADD(t->unk_id);
                unk_pending = 1;
            }
        }
        i += len;
    }
    if (unk_pending) ADD(t->unk_id);
#undef ADD
    if (k > 0) s[k - 1].next = -1;
    *count = k;
    return NULL;
}

static const char *bpe_uncached(Tokenizer *t, const char *w, size_t n, TokIds *out) {
    if (t->ignore_merges) {
        /* the whole word is a token: take it without merging (Llama 3) */
        int32_t id;
        if (t->byte_level) {
            char mapped[4 * CACHE_MAX_WORD];
            size_t m = 0;
            if (n <= CACHE_MAX_WORD) {
                for (size_t i = 0; i < n; i++)
                    m += (size_t)tok_utf8_encode(t->byte_to_char[(unsigned char)w[i]], mapped + m);
                id = tok_vocab_find(t, mapped, m);
            } else
                id = -1;
        } else
            id = tok_vocab_find(t, w, n);
        if (id >= 0) {
            tokids_push(out, id);
            return NULL;
        }
    }
    int32_t count;
    const char *err = initial_symbols(t, w, n, &t->syms, &t->syms_cap, &count);
    if (err) return err;
    merge_symbols(&t->merges, t->syms, count, &t->heap);
    for (int32_t i = 0; i >= 0 && i < count; i = t->syms[i].next) tokids_push(out, t->syms[i].id);
    return NULL;
}

const char *tok_bpe_word(Tokenizer *t, const char *w, size_t n, TokIds *out) {
    if (n == 0) return NULL;
    if (n > CACHE_MAX_WORD) return bpe_uncached(t, w, n, out);
    TokWordCache *c = &t->cache;
    uint64_t h = hash_bytes(w, n);
    size_t slot = cache_slot(c, h, w, n);
    if (c->hash[slot]) {
        for (uint32_t i = 0; i < c->ids_len[slot]; i++) tokids_push(out, c->ids.ids[c->ids_off[slot] + i]);
        return NULL;
    }
    size_t before = out->n;
    const char *err = bpe_uncached(t, w, n, out);
    if (err) return err;
    if (c->count + 1 > (c->mask + 1) / 2) {
        cache_clear(c);
        slot = cache_slot(c, h, w, n);
    }
    c->hash[slot] = h;
    c->key_off[slot] = (uint32_t)c->keys.n;
    c->key_len[slot] = (uint32_t)n;
    c->ids_off[slot] = (uint32_t)c->ids.n;
    c->ids_len[slot] = (uint32_t)(out->n - before);
    tokbuf_append(&c->keys, w, n);
    for (size_t i = before; i < out->n; i++) tokids_push(&c->ids, out->ids[i]);
    c->count++;
    return NULL;
}
