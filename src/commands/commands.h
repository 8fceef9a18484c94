/* commands.h — the subcommands of dam_dist, one entry point each (argv[0] is the subcommand name).
 * Each returns the process exit status; errors inside go through dam_fail. */
#ifndef DAM_COMMANDS_H
#define DAM_COMMANDS_H

int cmd_train(int argc, char **argv);      /* dam_dist [--config F] ... : the main job */
int cmd_toy(int argc, char **argv);        /* dam_dist toy --out DIR [--models N] [--seed S] */
int cmd_prepare(int argc, char **argv);    /* dam_dist prepare --tokenizer DIR --input F --out F.h5 ... */
int cmd_tokenize(int argc, char **argv);   /* dam_dist tokenize --tokenizer DIR [--decode] */
int cmd_inspect(int argc, char **argv);    /* dam_dist inspect --model DIR : validate and summarize */
int cmd_precompute(int argc, char **argv); /* dam_dist precompute --config F [--topk K] */
int cmd_plan(int argc, char **argv);       /* dam_dist plan --config F --ranks N : memory per rank */
int cmd_merge(int argc, char **argv);      /* dam_dist merge --method M --out DIR ... : mergekit's merges */
int cmd_eval(int argc, char **argv);   /* dam_dist eval --config F --model DIR ... : metrics per dataset */
int cmd_evolve(int argc, char **argv); /* dam_dist evolve --config F ... : CMA-ES over merge weights */
/* dam_dist launch LAUNCHER ARGS...: Ctrl-C becomes SIGUSR1 to the launcher (no MPI in this process);
 * self is the path this program was run as (for the resume line) */
int cmd_launch(const char *self, int argc, char **argv);
int cmd_finetune(int argc, char **argv); /* dam_dist finetune --model DIR --data F.h5 --out DIR ... */

#endif
