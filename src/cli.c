/* cli.c — see cli.h. The help texts list every option each command's parser accepts; README's
 * "Commands" and tests/cli_help.sh follow them. */
#include "cli.h"

#include <string.h>

const char cli_command_list[] = "toy, prepare, tokenize, precompute, inspect, plan, help, version";

static const char train_help[] =
    "usage: dam_dist --config FILE [--out DIR] [--max-steps N] [--eval-rows N] [--resume | --resume auto]\n"
    "                [--force] [--allow-config-change] [--allow-tokenizer-mismatch]\n"
    "The merge: learns the DAM coefficients of the config's models and writes the merged model.\n"
    "Run it alone, or under mpirun -n N / srun -n N --mpi=pmix for the config's dp x pp x tp layout.\n"
    "  --config FILE                the run configuration (docs/config.md)\n"
    "  --out DIR                    the merged model's directory, instead of output.dir (the metrics\n"
    "                               file goes beside it: DIR.metrics.jsonl; checkpoints in DIR.ckpt\n"
    "                               unless checkpoint.dir is set)\n"
    "  --max-steps N                stop after global step N (the schedule still follows train.steps);\n"
    "                               a checkpoint and the merged model are written\n"
    "  --eval-rows N                end with the per-token KL to each source on the last N rows of its\n"
    "                               dataset, after DAM and for the plain average\n"
    "  --resume                     continue from the newest checkpoint (any layout); none: an error\n"
    "  --resume auto                continue when a checkpoint exists, else start fresh (for requeued jobs)\n"
    "  --force                      replace an output.dir that is not an earlier dam_dist output\n"
    "  --allow-config-change        resume although settings that shape the coefficients changed\n"
    "  --allow-tokenizer-mismatch   run although a dataset was made with another tokenizer than its model's\n"
    "  -h, --help                   this text\n"
    "Exit status: 0 finished; 75 stopped by SIGUSR1, SIGTERM or SIGINT after writing a checkpoint\n"
    "(resume with --resume); 1 an error (one line on stderr); 130 a second Ctrl-C (no checkpoint).\n"
    "Other commands: dam_dist help.\n";

static const char toy_help[] =
    "usage: dam_dist toy --out DIR [--models N] [--seed S] [--size small|tiny|bench|smol] [--force]\n"
    "A base model, N specialists fine-tuned from it, their datasets and a config.json, for trying the\n"
    "merge: dam_dist --config DIR/config.json.\n"
    "  --out DIR          where to write (refused if it holds something else, unless --force)\n"
    "  --models N         specialists, 2 to 8 (default 3)\n"
    "  --seed S           random seed (default 1)\n"
    "  --size NAME        small (default; 2.4M parameters, 4 layers), tiny (2 layers), bench (51M, 15\n"
    "                     layers), smol (the SmolLM2-135M shape, 49152-token vocabulary)\n"
    "  --force            replace DIR even when it is not an earlier toy\n"
    "  -h, --help         this text\n";

static const char prepare_help[] =
    "usage: dam_dist prepare --tokenizer DIR --input FILE --out FILE.h5 --seq-len L [options]\n"
    "Text to an HDF5 token file for one model's dataset (docs/data.md has the details).\n"
    "  --tokenizer DIR        the model's directory (tokenizer.json), or a tokenizer.json\n"
    "  --input FILE           JSON lines (default) or plain text (--format)\n"
    "  --out FILE.h5          the token file (written to FILE.h5.tmp, renamed when complete)\n"
    "  --seq-len L            tokens per row\n"
    "  --format F             jsonl (default), text (documents separated by blank lines), text-whole\n"
    "  --field NAME           JSON lines: the example text is this field\n"
    "  --template STR         JSON lines: the example text is STR with {field} filled from each object\n"
    "  --pack | --no-pack     concatenate examples into full rows | one example per row, padded (default)\n"
    "  --truncate | --skip-long  an example longer than L is cut (default) | left out\n"
    "  --bos | --no-bos       force | suppress BOS before every example (default: the tokenizer's own)\n"
    "  --eos | --no-eos       force | suppress EOS after every example\n"
    "  --max-examples N       use at most N examples\n"
    "  --seed S               shuffle the examples (deterministically) before taking them\n"
    "  -h, --help             this text\n";

static const char tokenize_help[] =
    "usage: dam_dist tokenize --tokenizer DIR [--decode] [--special]\n"
    "Token ids of the text on stdin, space separated (or, with --decode, the text of the ids on stdin),\n"
    "as prepare makes them: for checking a tokenizer against Hugging Face's.\n"
    "  --tokenizer DIR    the model's directory (tokenizer.json), or a tokenizer.json\n"
    "  --decode           read ids, print text\n"
    "  --special          add BOS/EOS as prepare does by default\n"
    "  -h, --help         this text\n";

static const char precompute_help[] =
    "usage: dam_dist precompute --config FILE [--topk K]\n"
    "Runs each source on its own dataset once and stores its top-K logits in the dataset file, so that\n"
    "the merge (with loss.topk = K) reads them instead of running the teachers. Any layout (mpirun).\n"
    "  --config FILE      the run configuration\n"
    "  --topk K           entries kept per position (default: loss.topk of the config)\n"
    "  -h, --help         this text\n";

static const char inspect_help[] =
    "usage: dam_dist inspect --model DIR [--model DIR ...]\n"
    "       dam_dist inspect --coefficients FILE\n"
    "Reads each model directory's config.json and safetensors headers, checks them as the merge would,\n"
    "and prints a summary (architecture, shapes, dtype, parameters); several models are also checked\n"
    "for being mergeable with each other.\n"
    "  --model DIR        a Hugging Face model directory (repeat for several)\n"
    "  --coefficients FILE  a dam_coefficients.safetensors: one line per tensor with its layer (-1\n"
    "                     outside the decoder layers), kind and the mean coefficient of each source\n"
    "  -h, --help         this text\n";

static const struct {
    const char *cmd, *text;
} helps[] = {
    {"", train_help},
    {"toy", toy_help},
    {"prepare", prepare_help},
    {"tokenize", tokenize_help},
    {"precompute", precompute_help},
    {"inspect", inspect_help},
};

const char *cli_help_text(const char *cmd) {
    if (!cmd) cmd = "";
    for (size_t i = 0; i < sizeof helps / sizeof *helps; i++)
        if (!strcmp(cmd, helps[i].cmd)) return helps[i].text;
    return NULL;
}

int cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

void cli_unknown_option(const char *cmd, const char *opt) {
    if (cmd && *cmd)
        dam_fail("%s: unknown option '%s' (dam_dist %s --help lists the options)", cmd, opt, cmd);
    dam_fail("unknown option '%s' (dam_dist --help lists the options)", opt);
}

void cli_missing_value(const char *cmd, const char *opt) {
    if (cmd && *cmd)
        dam_fail("%s: option '%s' needs a value (dam_dist %s --help lists the options)", cmd, opt, cmd);
    dam_fail("option '%s' needs a value (dam_dist --help lists the options)", opt);
}

void cli_bad_option(const char *cmd, const char *opt, const char *value_options) {
    size_t n = strlen(opt);
    for (const char *p = value_options ? strstr(value_options, opt) : NULL; n && p; p = strstr(p + 1, opt))
        if ((p == value_options || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0)) cli_missing_value(cmd, opt);
    cli_unknown_option(cmd, opt);
}

void cli_unknown_command(const char *name) {
    dam_fail("unknown command '%s'; the commands are %s, and the merge itself is dam_dist --config FILE "
             "[options] (dam_dist --help)",
             name, cli_command_list);
}
