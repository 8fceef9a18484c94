/* toy_tasks.h — the character-level toy tasks of `dam_dist toy --tasks` (toy_tasks.c): a tokenizer and
 * per task train/eval token files with answer masks, for a base fine-tuned on their mix and one
 * specialist per task (tools/make_specialists.sh). toy.c writes the randomly initialised model. */
#ifndef DAM_TOY_TASKS_H
#define DAM_TOY_TASKS_H

#include <stdint.h>

enum { TOY_TASK_VOCAB = 48, TOY_TASK_SEQ = 16 }; /* the model's vocab_size and the rows' length */

/* Into dir: base/tokenizer.json and base/tokenizer_config.json (base/ must exist), then
 * data/<task>_train.h5 and data/<task>_eval.h5 for task add, rev, sort and mix (all three, shuffled),
 * each with /input_ids, /attention_mask and /answer_mask. Deterministic by seed. */
void toy_tasks_write(const char *dir, uint64_t seed);

#endif
