/* runctl.h — how the main job is started, stopped and continued: its command line, the stop
 * signals, the exact command that resumes it, and a metrics file kept in step with checkpoints.
 *
 * Exit statuses of the main job: 0 finished (merged model written); 75 stopped by a signal after
 * writing its checkpoint, resume me (EX_TEMPFAIL of sysexits.h); 1 an error; 128 + n killed by
 * signal n (a second SIGINT aborts at once with 130, without a checkpoint). */
#ifndef DAM_RUNCTL_H
#define DAM_RUNCTL_H

#include <stdint.h>
#include <stdio.h>

#define DAM_EXIT_STOPPED 75

typedef enum { RESUME_NO = 0, RESUME_REQUIRED = 1, RESUME_AUTO = 2 } ResumeMode;

typedef struct {
    const char *config, *out;
    const char *device; /* --device cpu|cuda: overrides the config's parallel.device (NULL: not given) */
    int max_steps;      /* -1: run to the end */
    int eval_rows;
    ResumeMode resume;
    int force, allow_config_change, allow_tokenizer_mismatch;
    int argc; /* the command line as run, for the resume line */
    char **argv;
} TrainArgs;

/* Parse `dam_dist [--config F] ...` strictly (numbers whole and in range); fails with one line. */
void train_args_parse(TrainArgs *a, int argc, char **argv);
extern const char train_usage[];

/* SIGTERM, SIGUSR1, SIGUSR2 and SIGINT ask for a stop at the next step boundary; rank 0 says so at
 * once on stderr (the step, the time left of it, that a second Ctrl-C aborts). A SIGINT at least
 * 1 s after the first stop signal ends the process at once (status 130, no checkpoint); one sooner
 * is the same interrupt delivered twice (timeout(1), a forwarding shell, a double press) and
 * changes nothing. Call after comm_init (rank 0 is the one that writes). */
void stop_signals_install(void);
int stop_signal_pending(void); /* the first stop signal received, 0 when none */
/* The main loop: step `step` (1-based, as printed) starts now; the last one took last_step_s
 * seconds (< 0: none measured yet). The acknowledgement estimates the time left from these. */
void stop_progress(int step, double last_step_s);

/* The command that resumes this run, runnable as printed: "cd DIR && [launcher -n N] ARGV
 * [--resume]" with shell quoting; the launcher is named from its environment (Open MPI's mpirun,
 * Slurm's srun, a PMI mpiexec) when the world has several ranks. Heap string. */
char *resume_command(const TrainArgs *a, int world_size);

/* The JSON-lines metrics file of a run that starts after `step`: parent directories created; on a
 * resume, lines of later steps (written before the checkpoint was taken) dropped first. NULL, with
 * a warning, when it cannot be written. */
FILE *metrics_open(const char *path, int resumed, int64_t step);

#endif
