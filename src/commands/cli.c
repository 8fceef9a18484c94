/* cli.c — see cli.h. The help texts list every option each command's parser accepts; README's
 * "Commands" and tests/cli_help.sh follow them. */
#include "cli.h"

#include <string.h>

#include "outdir.h"

const char cli_command_list[] =
    "toy, prepare, tokenize, precompute, inspect, plan, merge, eval, evolve, finetune, help, version";

static const char train_help[] =
    "usage: dam_dist --config FILE [--out DIR] [--device cpu|cuda] [--max-steps N] [--eval-rows N]\n"
    "                [--resume | --resume auto] [--force] [--allow-config-change] "
    "[--allow-tokenizer-mismatch]\n"
    "The merge: learns the DAM coefficients of the config's models and writes the merged model.\n"
    "Run it alone, or under mpirun -n N / srun -n N --mpi=pmix for the config's dp x pp x tp layout.\n"
    "  --config FILE                the run configuration (docs/config.md)\n"
    "  --out DIR                    the merged model's directory, instead of output.dir (the metrics\n"
    "                               file goes beside it: DIR" OUTDIR_METRICS_SUFFIX
    "; checkpoints in DIR" OUTDIR_CKPT_SUFFIX "\n"
    "                               unless checkpoint.dir is set)\n"
    "  --device cpu|cuda            the backend, over parallel.device (cuda: a make CUDA=1 build)\n"
    "  --max-steps N                stop after global step N (the schedule still follows train.steps);\n"
    "                               a checkpoint and the merged model are written\n"
    "  --eval-rows N                end with the per-token KL to each source on the last N rows of its\n"
    "                               dataset, after DAM and for the plain average\n"
    "  --resume                     continue from the newest checkpoint (any layout); none: an error\n"
    "  --resume auto                continue when a checkpoint exists, else start fresh (for requeued jobs)\n"
    "  --force                      replace an output that is not an earlier DAM run's (evolve's, merge's,\n"
    "                               finetune's, or not dam_dist's), or share another command's checkpoint "
    "dir\n"
    "  --allow-config-change        resume although settings that shape the coefficients changed\n"
    "  --allow-tokenizer-mismatch   run although a dataset was made with another tokenizer than its model's\n"
    "  -h, --help                   this text\n"
    "Exit status: 0 finished; 75 stopped by SIGUSR1, SIGTERM or SIGINT after writing a checkpoint\n"
    "(resume with --resume); 1 an error (one line on stderr); 130 a second Ctrl-C (no checkpoint).\n"
    "Other commands: dam_dist help.\n";

static const char toy_help[] =
    "usage: dam_dist toy --out DIR [--models N] [--seed S] [--size small|tiny|bench|smol] [--arch A]\n"
    "                    [--force]\n"
    "       dam_dist toy --tasks --out DIR [--seed S] [--force]\n"
    "A base model, N specialists fine-tuned from it, their datasets and a config.json, for trying the\n"
    "merge: dam_dist --config DIR/config.json; each model has a byte-level BPE tokenizer.json, and\n"
    "DIR/text/m<k>.jsonl is text to try prepare and tokenize on. With --tasks: a randomly initialised\n"
    "character-level model, its tokenizer and the tasks add, rev, sort (and their mix) as train/eval\n"
    "token files with answer masks, for `finetune` (tools/make_specialists.sh).\n"
    "  --tasks            the character-level toy tasks instead\n"
    "  --out DIR          where to write (refused if it holds something else, unless --force)\n"
    "  --models N         specialists, 2 to 8 (default 3)\n"
    "  --seed S           random seed (default 1)\n"
    "  --size NAME        small (default; 2.4M parameters, 4 layers), tiny (2 layers), bench (51M, 15\n"
    "                     layers), smol (the SmolLM2-135M shape, 49152-token vocabulary)\n"
    "  --arch A           llama (default) or qwen3 (Qwen3ForCausalLM: per-head q/k norms added)\n"
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
    "       dam_dist inspect --verify DIR | --checkpoint FILE|DIR | --data FILE\n"
    "Reads each model directory's config.json and safetensors headers, checks them as the merge would,\n"
    "and prints a summary (architecture, shapes, dtype, parameters); several models are also checked\n"
    "for being mergeable with each other.\n"
    "  --model DIR        a Hugging Face model directory (repeat for several)\n"
    "  --coefficients FILE  a dam_coefficients.safetensors: one line per tensor with its layer (-1\n"
    "                     outside the decoder layers), kind and the mean coefficient of each source,\n"
    "                     under the sources' names the file records (source0.. in files without)\n"
    "  --verify DIR       a merged output: every safetensors shard against dam_report.json's hashes\n"
    "  --checkpoint PATH  a checkpoint file, or every one of a checkpoint directory, against its\n"
    "                     checksums (one line each; exit 1 naming the first damaged one)\n"
    "  --data FILE        a token file against its checksums, and the hash of its content\n"
    "  -h, --help         this text\n";

static const char merge_help[] =
    "usage: dam_dist merge --method linear|task_arithmetic|ties|dare_ties|slerp --out DIR [--config F]\n"
    "                      [--base DIR] [--model DIR ...] [--weights w1,w2,...] [--density D]\n"
    "                      [--lambda L] [--t T] [--seed S] [--normalize | --no-normalize]\n"
    "                      [--shard-size SIZE] [--force]\n"
    "The classic weight-space merges, as mergekit defines them (docs/merge.md), streamed one tensor at\n"
    "a time; under mpirun -n N the output shards are shared among the ranks. Writes a Hugging Face\n"
    "directory (bf16 shards, config.json and tokenizer files of the base or first model) and\n"
    "merge_report.json.\n"
    "  --method M         linear: sum of w_i * model_i (over sum w_i when normalized); task_arithmetic:\n"
    "                     base + lambda * sum of w_i * (model_i - base); ties: task vectors trimmed to\n"
    "                     their top --density by magnitude, sign election; dare_ties: random drop (keep\n"
    "                     --density, rescale 1/density), sign election; slerp: base -> model on a sphere\n"
    "  --out DIR          the merged model's directory (built in DIR.tmp, renamed when complete)\n"
    "  --config F         a DAM run configuration: base_model and models[].path from it\n"
    "  --base DIR         the base model (task_arithmetic, ties, dare_ties; slerp's t = 0 end)\n"
    "  --model DIR        a model to merge (repeat); slerp: one with --base, or two\n"
    "  --weights LIST     one weight per --model, comma separated (default 1 each)\n"
    "  --density D        ties, dare_ties: fraction of each task vector kept, in (0, 1] (default 1)\n"
    "  --lambda L         task vector scale (default 1)\n"
    "  --t T              slerp: position in [0, 1] (default 0.5)\n"
    "  --seed S           dare_ties: random seed of the drop masks (default 1)\n"
    "  --normalize        divide by the weights' sum (default: linear, ties)\n"
    "  --no-normalize     do not (default: task_arithmetic, dare_ties)\n"
    "  --shard-size SIZE  bytes per output shard, like 5GB (default) or 500MB\n"
    "  --force            replace DIR even when it is not an earlier merge output\n"
    "  -h, --help         this text\n";

static const char eval_help[] =
    "usage: dam_dist eval --config FILE --model DIR [--model DIR ...] [--rows N] [--json] [--generate]\n"
    "Each model on each dataset of the config, against that dataset's source (its teacher): cross-entropy\n"
    "of the next token, the training loss's KL at loss.temperature, top-1 agreement with the source, and\n"
    "exact match where the file has /answer_mask. Rows split over the config's layout (mpirun).\n"
    "  --config FILE      the run configuration (models[k].path teaches models[k].dataset)\n"
    "  --model DIR        a Hugging Face model directory to evaluate (repeat for several); the same\n"
    "                     architecture as the config's sources\n"
    "  --rows N           the last N rows of each dataset (default: all)\n"
    "  --json             one JSON document (models -> datasets -> metrics) instead of the table\n"
    "  --generate         also generate each answer greedily from its prompt (slower)\n"
    "  -h, --help         this text\n";
static const char evolve_help[] =
    "usage: dam_dist evolve --config FILE [--out DIR] [--checkpoint-dir DIR] [--population P]\n"
    "                       [--generations G] [--sigma S] [--rows N] [--seed S] [--max-evals E]\n"
    "                       [--resume [auto|PATH]] [--force]\n"
    "CMA-ES over merge weights, one per source per decoder layer (+ embeddings, + final norm and lm_head),\n"
    "minimising the summed KL to each source on its own data (DAM's KL term); writes the best merge to the\n"
    "directory of its own (never the DAM run's output.dir) with evolve_report.json (fitness per\n"
    "generation, evaluations, tokens, wall time).\n"
    "Any layout of the config (mpirun): the data-parallel replicas evaluate candidates in parallel.\n"
    "  --config FILE        the run configuration (models, datasets, loss.temperature, output.dir)\n"
    "  --out DIR            where to write the merge (default <output.dir>-evolve; refused if it holds\n"
    "                       another command's output, such as the DAM run's, unless --force)\n"
    "  --checkpoint-dir DIR where evolve_state.bin goes (default <out>" OUTDIR_CKPT_SUFFIX
    "; never the DAM run's\n"
    "                       checkpoint.dir unless --force)\n"
    "  --population P       candidates per generation (default 4 + floor(3 ln n), n the genome length)\n"
    "  --generations G      generations (default 100)\n"
    "  --sigma S            initial step size (default 0.1; the search starts at the plain average 1/N)\n"
    "  --rows N             the first N rows of each dataset (default: those a DAM run of the config reads)\n"
    "  --seed S             random seed (default train.seed)\n"
    "  --max-evals E        no generation starts that would exceed E fitness evaluations in all\n"
    "  --resume [auto|PATH] continue from the saved state (checkpoint dir's evolve_state.bin, or PATH);\n"
    "                       auto: when one exists, else start fresh\n"
    "  --force              replace an output that is not an earlier evolve's, or share a checkpoint dir\n"
    "  -h, --help           this text\n"
    "Exit status: 0 finished; 75 stopped by SIGUSR1, SIGTERM or SIGINT after saving its state (resume\n"
    "with --resume); 1 an error (one line on stderr).\n";
static const char finetune_help[] =
    "usage: dam_dist finetune --model DIR --data F.h5 [--data F2.h5 ...] --out DIR [options]\n"
    "       dam_dist finetune --model DIR --steps 0 --eval F.h5 [--eval F2.h5 ...]\n"
    "Full fine-tuning of one model with AdamW on next-token cross-entropy, through the merge's own\n"
    "forward and backward; writes a Hugging Face directory (bf16). One process (no mpirun).\n"
    "  --model DIR            the model to fine-tune (its config.json and tokenizer files are copied)\n"
    "  --data F.h5            a token file to train on (repeat: rows drawn uniformly from all of them)\n"
    "  --out DIR              the fine-tuned model (refused if it holds something else, unless --force)\n"
    "  --steps N              optimizer steps (default 100; 0: evaluate only)\n"
    "  --batch B              sequences per step (default 16)\n"
    "  --lr LR                AdamW learning rate, constant (default 0.001)\n"
    "  --weight-decay W       decoupled weight decay of the matrices, not of norms or biases (default 0)\n"
    "  --max-grad-norm G      clip the global gradient norm to G (default 1; 0: no clipping)\n"
    "  --seed S               the order rows are drawn in (default 1)\n"
    "  --answer-only          the loss on /answer_mask tokens only (else every valid next token)\n"
    "  --eval F.h5            after training: teacher-forced cross-entropy and exact-match accuracy on\n"
    "                         the file's answer tokens (repeat for several files)\n"
    "  --device cpu|cuda      the backend (default cpu)\n"
    "  --force                replace DIR even when it is not an earlier finetune output\n"
    "  -h, --help             this text\n";

static const struct {
    const char *cmd, *text;
} helps[] = {
    {"", train_help},
    {"merge", merge_help},
    {"toy", toy_help},
    {"prepare", prepare_help},
    {"tokenize", tokenize_help},
    {"precompute", precompute_help},
    {"inspect", inspect_help},
    {"eval", eval_help},
    {"evolve", evolve_help},
    {"finetune", finetune_help},
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
