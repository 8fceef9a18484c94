/* main.c — dam_dist: subcommand dispatch. MPI is initialised for every subcommand, so that
 * `./dam_dist ...` and `mpirun -n R dam_dist ...` behave alike. */
#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "commands.h"

static void usage(FILE *f) {
    fprintf(
        f,
        "usage:\n"
        "  dam_dist [--config FILE] [--resume] [--max-steps N]   train DAM coefficients, write the merged "
        "model\n"
        "  dam_dist toy --out DIR [--models N] [--seed S]        tiny sources, datasets and a config\n"
        "  dam_dist prepare --tokenizer DIR --input F --out F.h5 --seq-len L [options]\n"
        "  dam_dist tokenize --tokenizer DIR [--decode]          ids for stdin text (or text for ids)\n"
        "  dam_dist inspect --model DIR                           validate a model directory, summarize it\n"
        "  dam_dist help                                          this text\n");
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    int rc;
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "toy"))
        rc = cmd_toy(argc - 1, argv + 1);
    else if (!strcmp(sub, "prepare"))
        rc = cmd_prepare(argc - 1, argv + 1);
    else if (!strcmp(sub, "tokenize"))
        rc = cmd_tokenize(argc - 1, argv + 1);
    else if (!strcmp(sub, "inspect"))
        rc = cmd_inspect(argc - 1, argv + 1);
    else if (!strcmp(sub, "help") || !strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        usage(stdout);
        rc = 0;
    } else if (argc == 1) {
        usage(stderr);
        rc = 2;
    } else
        rc = cmd_train(argc, argv);
    comm_finalize();
    return rc;
}
