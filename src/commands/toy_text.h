/* toy_text.h — the text side of the default `dam_dist toy` (toy_text.c): a text per specialist and a
 * byte-level BPE tokenizer.json trained on them, so that every step of the README (prepare and
 * tokenize included) runs on the toy. toy.c writes the models and their random token files. */
#ifndef DAM_TOY_TEXT_H
#define DAM_TOY_TEXT_H

#include <stdint.h>

/* Into dir: text/m<k>.jsonl for k < n_models ({"text": ...} per line, `docs` documents each: words
 * drawn mostly from specialist k's own part of a made-up lexicon, as its token file draws from its own
 * slice of the vocabulary), then a GPT-2-style byte-level BPE of exactly `vocab` ids trained on those
 * texts (<pad> 0, <s> 1, </s> 2, the 243 bytes that occur in UTF-8, the merges, and <unused_N> tokens
 * when the texts give fewer merges than the vocabulary has room for), written as tokenizer.json and
 * tokenizer_config.json into each of the model directories `model_dirs` (n_dirs of them).
 * Deterministic by seed. Returns the tokenizer's canonical hash as 16 hex digits in hash_hex[17]. */
void toy_text_write(const char *dir, int n_models, int docs, int vocab, uint64_t seed,
                    const char *const *model_dirs, int n_dirs, char *hash_hex);

#endif
