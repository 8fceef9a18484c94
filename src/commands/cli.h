/* cli.h — what every subcommand's command line shares: the help texts (`dam_dist CMD --help`), the
 * list of commands, and the one wording of an unknown option or a missing value:
 *   dam_dist: error: toy: unknown option '--x' (dam_dist toy --help lists the options)
 * (the main job, which has no command name: "unknown option '--x' (dam_dist --help lists ...)"). */
#ifndef DAM_CLI_H
#define DAM_CLI_H

#include <stdio.h>

#include "util.h"

/* The commands dam_dist knows, for messages: "toy, prepare, tokenize, precompute, inspect, plan,
 * help, version". */
extern const char cli_command_list[];

/* The help text of a command (NULL or "" for the main job), or NULL when there is none here (plan
 * prints its own). Ends with a newline. */
const char *cli_help_text(const char *cmd);

/* Does argv[1..argc-1] ask for help (--help or -h)? */
int cli_wants_help(int argc, char **argv);

/* One error line in the shared wording, then exit status 1 (through dam_fail). cmd is the
 * subcommand ("toy") or NULL for the main job. */
DAM_NORETURN void cli_unknown_option(const char *cmd, const char *opt);
DAM_NORETURN void cli_missing_value(const char *cmd, const char *opt);
DAM_NORETURN void cli_unknown_command(const char *name);
/* For a parser's last `else`, reached by an unknown option or by an option that takes a value given
 * last without one: value_options lists the latter, space separated ("--config --topk"), so that
 * the line says which of the two it was. */
DAM_NORETURN void cli_bad_option(const char *cmd, const char *opt, const char *value_options);

#endif
