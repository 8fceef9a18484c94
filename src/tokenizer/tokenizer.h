/* tokenizer.h — Hugging Face tokenizer.json in C, for the two BPE families that causal LLMs use:
 *
 *   byte-level BPE   (GPT-2, Llama 3, Qwen2): Split(Regex) / ByteLevel pre-tokenizers, ByteLevel
 *                    decoder, optional NFC normalizer (utf8proc);
 *   sentencepiece BPE (Llama 2, Mistral): Metaspace pre-tokenizer or the Prepend("▁") + Replace(" ",
 *                    "▁") normalizer, byte_fallback <0xNN> tokens, Replace/ByteFallback/Fuse/Strip
 *                    (or Metaspace) decoder.
 *
 * The pipeline is the one `tokenizers` runs: added tokens are cut out of the raw text first, the
 * rest is normalized, pre-tokenized (PCRE2, compiled once, JIT when available) and each piece is
 * merged by BPE ranks (a heap, O(n log n) per word; results cached per word). Anything else in a
 * tokenizer.json (WordPiece, Unigram, unknown normalizers, ...) is refused at load time with one
 * line naming the file and the unsupported part. A Tokenizer is a plain struct: no globals, and
 * encoding state (scratch buffers, word cache) lives in it, so use one per thread. */
#ifndef DAM_TOKENIZER_H
#define DAM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---------------------------------------------------------------- small containers */

/* A growable array of token ids. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} TokIds;
void tokids_push(TokIds *v, int32_t id);
void tokids_free(TokIds *v);

/* A growable byte buffer. */
typedef struct {
    char *data;
    size_t n, cap;
} TokBuf;
void tokbuf_append(TokBuf *b, const char *s, size_t n);

/* A list of byte strings (pre-tokens, or tokens being decoded): spans into one buffer. */
typedef struct {
    size_t off, len;
} TokSpan;
typedef struct {
    TokBuf text;
    TokSpan *spans;
    size_t n, cap;
} TokPieces;

/* ---------------------------------------------------------------- hash tables (tok_bpe.c) */

/* Token string -> id (open addressing; keys are the id -> string table itself). */
typedef struct {
    int32_t *slots; /* id, or -1 when empty */
    size_t mask;
} TokVocabIndex;

/* (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t *keys; /* ((left + 1) << 32) | (right + 1); 0 when empty */
    int32_t *rank, *merged;
    size_t mask;
} TokMergeTable;

/* Pre-token bytes -> ids, so that frequent words skip BPE. Cleared when full. */
typedef struct {
    uint64_t *hash; /* 0 when empty */
    uint32_t *key_off, *key_len, *ids_off, *ids_len;
    size_t mask, count;
    TokBuf keys; /* concatenated keys */
    TokIds ids;  /* concatenated results */
} TokWordCache;

/* BPE merge state of one word: a linked list of symbols and a heap of candidate merges. */
typedef struct {
    int32_t id;
    int32_t prev, next; /* neighbours, -1 at the ends */
    int32_t alive;
} TokSymbol;
typedef struct {
    int32_t rank, pos, merged;
} TokCandidate;
typedef struct {
    TokCandidate *items;
    size_t n, cap;
} TokHeap;

/* ---------------------------------------------------------------- pipeline steps */

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
    char *norm_content; /* content after the normalizer (matched in normalized text) */
    size_t norm_len;
} TokAddedToken;

typedef enum { TOK_NORM_NFC, TOK_NORM_PREPEND, TOK_NORM_REPLACE } TokNormKind;
typedef struct {
    TokNormKind kind;
    char *a, *b; /* PREPEND: a = prefix; REPLACE: a -> b */
} TokNormalizer;

typedef enum {
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT
} TokSplitMode;
typedef enum { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE } TokPreKind;
typedef enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER } TokPrependScheme;
typedef struct {
    TokPreKind kind;
    pcre2_code *re; /* SPLIT, or BYTELEVEL with use_regex */
    pcre2_match_data *md;
    int jit;
    TokSplitMode mode;
    int add_prefix_space;     /* BYTELEVEL */
    char replacement[8];      /* METASPACE: the replacement character ("▁") in UTF-8 */
    TokPrependScheme prepend; /* METASPACE */
    int split;                /* METASPACE */
} TokPreTokenizer;

typedef enum {
    TOK_DEC_BYTELEVEL,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
    TOK_DEC_METASPACE
} TokDecKind;
typedef struct {
    TokDecKind kind;
    char *a, *b;     /* REPLACE a -> b; STRIP: a = content; METASPACE: a = replacement */
    int start, stop; /* STRIP */
    int prepend;     /* METASPACE: the first token's replacement characters are dropped */
} TokDecoder;

/* ---------------------------------------------------------------- the tokenizer */

typedef struct {
    char *path;         /* tokenizer.json */
    uint64_t hash;      /* canonical fingerprint (tokenizer_canonical_hash), not of the raw bytes */
    int64_t vocab_size; /* max id + 1 over the model vocabulary and the added tokens */

    /* model (BPE) */
    char **tokens; /* id -> string ("" for ids without one) */
    uint32_t *token_len;
    int32_t n_ids;
    TokVocabIndex vocab;
    TokMergeTable merges;
    int32_t unk_id; /* -1 when none */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_token[256];    /* byte_fallback: id of "<0xNN>", -1 when absent */
    int byte_level;             /* the pre-tokenizer ends with ByteLevel: model sees byte-mapped chars */
    int32_t byte_level_id[256]; /* byte-level: id of the single character that stands for each byte */
    uint16_t byte_to_char[256]; /* byte-level alphabet (GPT-2 bytes_to_unicode) */
    int16_t char_to_byte[512];  /* its inverse, -1 for characters outside the alphabet */

    TokAddedToken *added;
    int n_added;
    int32_t *added_of_id;     /* id -> index into added, -1 when the id is not an added token */
    uint8_t added_first[256]; /* 1 for bytes that start some added token (fast scan) */
    int has_normalized_added;
    TokNormalizer *norm;
    int n_norm;
    TokPreTokenizer *pre;
    int n_pre;
    TokDecoder *dec;
    int n_dec;

    /* what encoding adds around a text: post_processor, overridden by tokenizer_config.json */
    int32_t prefix[8], suffix[8];
    int n_prefix, n_suffix;
    int32_t bos_id, eos_id, pad_id; /* -1 when unknown */

    /* scratch state (encoding is not re-entrant: one Tokenizer per thread) */
    TokWordCache cache;
    TokSymbol *syms;
    size_t syms_cap;
    TokHeap heap;
    TokBuf scratch[2];
    TokPieces pieces[2];
    char err[256];
} Tokenizer;

/* Load dir/tokenizer.json (or the file itself when path is a file) and dir/tokenizer_config.json
 * when present. Fails (dam_fail) with one line naming the file on anything unsupported. */
void tokenizer_load(Tokenizer *t, const char *path);
void tokenizer_free(Tokenizer *t);

/* Append the ids of text[0..n) to out, without the post-processor's special tokens. Returns NULL,
 * or a message (owned by t) saying why the text cannot be encoded: invalid UTF-8 (with the byte
 * offset), a character outside the vocabulary with no <unk>. The caller adds the file and line. */
const char *tokenizer_encode(Tokenizer *t, const char *text, size_t n, TokIds *out);

/* Decode ids to text as `tokenizers` decode(ids, skip_special_tokens=False) does (special tokens
 * appear as their content, normalized added tokens as their normalized content, both through the
 * decoder; invalid UTF-8 becomes U+FFFD). Heap string; *len_out gets its length. */
char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, size_t *len_out);

/* The id of a token string (added token or vocabulary entry), -1 when absent. */
int32_t tokenizer_token_id(const Tokenizer *t, const char *s);

/* Canonical fingerprint of a tokenizer.json (tok_hash.c): dam_hash64 over a canonical form of its
 * model, added_tokens, normalizer and pre_tokenizer, the same when the file was only re-saved
 * (whitespace, key order, 1 vs 1.0, string escapes, merges as "a b" or ["a", "b"], null vs missing
 * fields) and different when a vocab id, merge, added token, normalizer or pre-tokenizer changes;
 * post_processor, decoder, truncation, padding and version are left out. path is the file or a
 * directory holding tokenizer.json. Returns 0 and sets *out, or -1 (no message) when there is no
 * such file; malformed JSON fails (dam_fail) naming the file. Works for any model type. */
int tokenizer_canonical_hash(const char *path, uint64_t *out);
/* Name of the canonical form, written next to the hash (dataset attribute tokenizer_hash_kind). */
#define TOKENIZER_HASH_KIND "canonical-v1"

/* ---------------------------------------------------------------- internals shared by tok_*.c */

/* tok_unicode.c */
/* Length of the valid UTF-8 prefix of s[0..n) (n when all valid). */
size_t tok_utf8_valid_prefix(const char *s, size_t n);
/* Decode one code point at s (valid UTF-8 assumed); *len gets its byte length. */
uint32_t tok_utf8_decode(const char *s, size_t *len);
int tok_utf8_encode(uint32_t cp, char *out); /* returns 1..4 */
/* Append s[0..n) to b replacing invalid UTF-8 with U+FFFD per maximal subpart (Rust's
 * String::from_utf8_lossy). */
void tok_utf8_lossy_append(TokBuf *b, const char *s, size_t n);
int tok_is_whitespace(uint32_t cp); /* Unicode White_Space */
/* Offset of the first code point that NFC might change (anything outside a few ranges known to be
 * stable in any context), or n when the text is certainly already NFC: the fast path. */
size_t tok_nfc_quick_check(const char *s, size_t n);
/* Append the NFC form of valid UTF-8 s[0..n) to out (utf8proc). Returns 0, or -1 when utf8proc
 * refuses (out of memory). */
int tok_nfc_append(TokBuf *out, const char *s, size_t n);

/* tok_hash.c: the canonical fingerprint of an already parsed tokenizer.json. */
struct cJSON;
uint64_t tok_canonical_hash_json(const struct cJSON *root);

/* tok_bpe.c */
void tok_vocab_build(Tokenizer *t);
int32_t tok_vocab_find(const Tokenizer *t, const char *s, size_t n);
void tok_merges_init(TokMergeTable *m, size_t n_merges);
void tok_merges_add(TokMergeTable *m, int32_t left, int32_t right, int32_t rank, int32_t merged);
void tok_merges_free(TokMergeTable *m);
void tok_cache_init(TokWordCache *c);
void tok_cache_free(TokWordCache *c);
/* Ids of one pre-token (bytes as the model sees them before byte-level mapping); appends to out.
 * Returns NULL or an error message. */
const char *tok_bpe_word(Tokenizer *t, const char *w, size_t n, TokIds *out);

#endif
