/* output.h — the merged Hugging Face directory, the learned coefficients and the run report. */
#ifndef DAM_OUTPUT_H
#define DAM_OUTPUT_H

#include "config.h"
#include "model.h"
#include "outdir.h"

typedef struct {
    int steps, total_steps, n_data;
    double wall_s, loss;
    double kl[DAM_MAX_SOURCES];
    const char *names[DAM_MAX_SOURCES];
    /* a command's own report (evolve_report.json), written into the directory before it is swapped
     * into place, so that a complete output always holds it */
    const char *extra_name, *extra_text;
} OutputReport;

/* The rule for replacing cfg->out_dir (outdir.h): inputs are the sources, the base, the datasets
 * and an init coefficients file; marker dam_report.json; cfg->force. */
typedef struct {
    OutDir od;
    const char *inputs[2 * DAM_MAX_SOURCES + 2];
} OutputTarget;
void output_target(OutputTarget *t, const DamConfig *cfg);
/* Before any work: may cfg->out_dir be replaced, and are the checkpoint dir and metrics file clear
 * of every input? Fails with one line. */
void output_check(const DamConfig *cfg, const char *ckpt_dir);

/* Write cfg->out_dir: bf16 shards (+ index.json), config.json, tokenizer/generation files copied
 * from the base (or the first source), dam_coefficients.safetensors and dam_report.json. Built in
 * "<out_dir>.tmp" and renamed into place when complete. */
void output_write(DamModel *m, const DamConfig *cfg, const OutputReport *rep);

/* The same over pipeline stages and tensor-parallel ranks: every rank of `writers` (the pp x tp
 * ranks of one data-parallel replica) calls it; each stage writes its own tensors, gathered over
 * tp, and rank 0 of writers merges the stages' shards into one index and writes the rest. */
void output_write_parallel(DamModel *m, const DamConfig *cfg, const OutputReport *rep,
                           const CommGroup *writers);

/* Pieces of the parallel write, for other commands that write a model directory the same way
 * (merge): the safetensors files of <tmp>/stage-000, stage-001, ... (each model.safetensors or a
 * model-XXXXX-of-YYYYY series), in that order, moved into tmp as one series named
 * model-00001-of-0000N.safetensors (model.safetensors when there is one file) with
 * model.safetensors.index.json when N > 1. Run by one rank after every stage directory is complete. */
void output_join_shards(const char *tmp, int n_stages);
/* Remove <tmp>/stage-000 ... (after output_join_shards). */
void output_remove_stages(const char *tmp, int n_stages);
/* config.json of the donor model directory (its stored dtype set to bfloat16) and its tokenizer and
 * generation files, written into dir. */
void output_copy_donor_files(const char *donor, const char *dir);

/* Read a dam_coefficients.safetensors into m (names and shapes must match). */
void output_load_coefficients(DamModel *m, const char *path);

#endif
