/* main.c — dam_dist: subcommand dispatch. MPI is initialised for every subcommand, so that
 * `./dam_dist ...` and `mpirun -n R dam_dist ...` behave alike; `--version` and `--help` answer
 * before MPI starts. */
#include <stdio.h>
#include <string.h>

#include "blas.h"
#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "version.h"

static const char usage_text[] =
    "usage: dam_dist COMMAND [options], or dam_dist --config FILE [options] for the merge itself\n"
    "  dam_dist --config FILE [--out DIR] [--device cpu|cuda] [--max-steps N] [--eval-rows N]\n"
    "           [--resume | --resume auto]\n"
    "           [--force] [--allow-config-change] [--allow-tokenizer-mismatch]\n"
    "                                  train DAM coefficients, write the merged model; exit status 0\n"
    "                                  finished, 75 stopped by a signal after a checkpoint (resume me)\n"
    "  dam_dist toy --out DIR [--models N] [--seed S] [--size small|tiny|bench|smol] [--force]\n"
    "  dam_dist toy --tasks --out DIR [--seed S] [--force]\n"
    "                                  a base, specialists, their datasets and a config\n"
    "  dam_dist prepare --tokenizer DIR --input F --out F.h5 --seq-len L [options]\n"
    "                                  text to an HDF5 token file (docs/data.md)\n"
    "  dam_dist tokenize --tokenizer DIR [--decode] [--special]\n"
    "                                  ids for stdin text (or text for ids)\n"
    "  dam_dist precompute --config F [--topk K]\n"
    "                                  teacher top-K logits into the dataset files\n"
    "  dam_dist inspect --model DIR [--model DIR ...] | --coefficients FILE\n"
    "                                  validate model directories, summarize them; or the mean\n"
    "                                  learned coefficient per source, layer and tensor kind\n"
    "  dam_dist eval --config F --model DIR [--model DIR ...] [--rows N] [--json] [--generate]\n"
    "                                  cross-entropy, KL, top-1 and exact match per dataset\n"
    "  dam_dist plan --config F --ranks N [--device cpu|cuda] [--gpu-mem GiB] [--json] [options]\n"
    "                                  memory per rank before a job is submitted (docs/memory.md)\n"
    "  dam_dist merge --method linear|task_arithmetic|ties|dare_ties|slerp --out DIR [options]\n"
    "                                  the classic merges of mergekit, streamed (docs/merge.md)\n"
    "  dam_dist evolve --config F [--population P] [--generations G] [--sigma S] [--rows N] [options]\n"
    "                                  CMA-ES over per-layer merge weights (the evolutionary baseline)\n"
    "  dam_dist finetune --model DIR --data F.h5 --out DIR [--steps N] [--lr LR] [options]\n"
    "                                  full fine-tuning of one model (AdamW, next-token cross-entropy)\n"
    "  dam_dist launch mpirun|srun ARGS... dam_dist --config FILE ...\n"
    "                                  run a launcher so that Ctrl-C ends in a checkpoint\n"
    "  dam_dist help | --help          this text;  dam_dist COMMAND --help: that command's options\n"
    "  dam_dist version | --version    version, git commit, what was built in\n";

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
} Subcommand;

static const Subcommand subcommands[] = {
    {"toy", cmd_toy},           {"prepare", cmd_prepare},
    {"tokenize", cmd_tokenize}, {"precompute", cmd_precompute},
    {"inspect", cmd_inspect},   {"plan", cmd_plan},
    {"merge", cmd_merge},       {"eval", cmd_eval},
    {"evolve", cmd_evolve},     {"finetune", cmd_finetune},
};

int main(int argc, char **argv) {
    blas_fix_kernel(argv); /* may re-execute this process (OPENBLAS_CORETYPE): before MPI_Init */
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "--version") || !strcmp(sub, "version")) {
        dam_print_version(stdout);
        return 0;
    }
    if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (argc == 1) {
        fputs(usage_text, stderr);
        return 2;
    }
    if (!strcmp(sub, "launch")) /* before MPI: the wrapper is not a rank; its arguments are the launcher's */
        return cmd_launch(argv[0], argc - 1, argv + 1);
    const Subcommand *cmd = NULL;
    for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++)
        if (!strcmp(sub, subcommands[i].name)) cmd = &subcommands[i];
    if (!cmd && sub[0] != '-') cli_unknown_command(sub); /* the main job takes options only */
    /* `dam_dist CMD ... --help` and `dam_dist --config F --help`: the command's own text (plan
     * prints its own) */
    const char *help = cli_help_text(cmd ? cmd->name : NULL);
    if (help && cli_wants_help(cmd ? argc - 1 : argc, cmd ? argv + 1 : argv)) {
        fputs(help, stdout);
        return 0;
    }
    comm_init(&argc, &argv);
    int rc;
    if (cmd)
        rc = cmd->run(argc - 1, argv + 1);
    else {
        if (comm_world_rank() == 0) { /* the main job's first line: the BLAS and its kernel */
            printf("%s\n", blas_describe());
            fflush(stdout);
        }
        rc = cmd_train(argc, argv); /* the main job takes flags only */
    }
    comm_finalize();
    return rc;
}
