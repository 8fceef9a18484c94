/* outdir.h — directories that a command replaces as a whole (the merged model, the toy), so that
 * nothing of a user's is lost:
 *   - an existing directory is replaced only when it is empty, a complete earlier output of the same
 *     command (its marker file says so, with the command's name: a DAM run's merge is never replaced
 *     by evolve, merge or finetune), or --force was given;
 *   - a checkpoint directory holding another command's checkpoints is not written into either;
 *   - no input (source or base model directory, dataset, coefficients file) is ever written into or
 *     over, whatever the flags: real paths are compared, both ways (out inside an input, an input
 *     inside out), for <out> and for the <out>.tmp and <out>.old that the swap uses;
 *   - the new directory is built in <out>.tmp (holding a marker that says it is partial) and swapped
 *     into place in one rename when complete: a failure leaves no directory that looks complete.
 * Refusals are one line naming the path and what to do. */
#ifndef DAM_OUTDIR_H
#define DAM_OUTDIR_H

typedef struct {
    const char *dir;        /* the directory the command writes */
    const char *what;       /* how the user named it: "output.dir", "--out" */
    const char *written_by; /* the command that writes it: "dam_dist train", "dam_dist evolve" ... */
    const char
        *marker; /* a JSON file in a complete output: {"written_by": "dam_dist ...", "complete": true} */
    const char *const *inputs; /* paths never written into or over */
    int n_inputs;
    int force; /* --force: replace what is not ours (never an input) */
} OutDir;

/* Fail (one line) unless the command may replace o->dir. Cheap; call it before any work, and again
 * before writing. */
void outdir_check(const OutDir *o);
/* A path the command writes beside the directory (checkpoints, metrics) must not be or hold an
 * input, nor lie inside one. */
void outdir_check_path(const OutDir *o, const char *path, const char *what);
/* outdir_check, then a fresh <dir>.tmp (a stale partial one removed) with the partial marker; the
 * returned path (heap) is where to build. */
char *outdir_begin(const OutDir *o);
/* Swap the complete <dir>.tmp into place (atomically where the file system can exchange two
 * names), then remove what was there before. */
void outdir_commit(const OutDir *o, const char *tmp);
/* Write a command's report as its marker file at path (atomically): `report` with "written_by"
 * and "complete": true added (what lets a later run of the command replace the directory); the
 * report is freed. */
struct cJSON;
void outdir_write_marker(struct cJSON *report, const char *written_by, const char *path);
/* 1 when dir holds o->marker with written_by starting with "dam_dist" and complete true. */
int outdir_is_complete(const char *dir, const char *marker);
/* The command whose complete output dir holds ("dam_dist train", "dam_dist merge" ...; heap), read
 * from any of the commands' marker files; NULL when none. Outputs written before the markers named
 * their command ("dam_dist") are told apart by what lies beside the marker. */
char *outdir_owner(const char *dir);
/* Fail (one line) unless the checkpoint directory ckpt_dir is free of another command's checkpoints
 * (a DAM run's step_*.h5, evolve's evolve_state.bin), or o->force. `what` names the setting. */
void outdir_check_checkpoints(const OutDir *o, const char *ckpt_dir, const char *what);

/* What every command writes beside its output directory <out> unless told otherwise: the
 * checkpoints in <out>.ckpt, the metrics in <out>.metrics.jsonl. The suffixes are macros so that the
 * help texts name the same paths. */
#define OUTDIR_CKPT_SUFFIX ".ckpt"
#define OUTDIR_METRICS_SUFFIX ".metrics.jsonl"
char *outdir_default_ckpt_dir(const char *out);     /* heap */
char *outdir_default_metrics_file(const char *out); /* heap */

#endif
