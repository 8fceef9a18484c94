/* tool_evolve_report.c — used by tests/cli_evolve.sh (no Python in CI): reads an evolve_report.json.
 * usage: tool_evolve_report REPORT traj         one line per generation (best, generation best, sigma,
 *                                                evaluations, tokens; %.17g), then the best genome
 *        tool_evolve_report REPORT best         best_fitness as %.6f
 *        tool_evolve_report REPORT check G N    exit 0 when the report has G generations, best fitness
 *                                                never increases (from the initial one) and ends below
 *                                                it, each generation's best is at most its own
 *                                                candidates' best, evaluations = 1 + population x
 *                                                generations, tokens = evaluations x tokens per
 *                                                evaluation, and the genome has N weights; else says
 *                                                what failed */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "json_util.h"

static double num(const cJSON *o, const char *key) { return json_get_number(o, key, "report", NULL); }

static int check(const cJSON *r, int gens, int genome) {
    const cJSON *g = cJSON_GetObjectItem(r, "per_generation");
    double lam = num(r, "population"), tpe = num(r, "tokens_per_evaluation"),
           prev = num(r, "initial_fitness");
    int n = cJSON_GetArraySize(g), i = 0;
    if (n != gens || num(r, "generations") != gens) return printf("generations: %d, want %d\n", n, gens), 1;
    if (num(r, "genome_length") != genome)
        return printf("genome length %g, want %d\n", num(r, "genome_length"), genome), 1;
    for (const cJSON *x = g->child; x; x = x->next, i++) {
        double best = num(x, "best_fitness"), evals = num(x, "evaluations");
        if (best > prev) return printf("generation %d: best %.9g after %.9g\n", i + 1, best, prev), 1;
        if (num(x, "generation_best") < best)
            return printf("generation %d: generation best below best\n", i + 1), 1;
        if (evals != 1 + lam * (i + 1)) return printf("generation %d: %g evaluations\n", i + 1, evals), 1;
        if (num(x, "tokens") != evals * tpe)
            return printf("generation %d: tokens %g\n", i + 1, num(x, "tokens")), 1;
        prev = best;
    }
    if (!(prev < num(r, "initial_fitness"))) return printf("no improvement on the initial fitness\n"), 1;
    if (prev != num(r, "best_fitness") || num(r, "evaluations") != 1 + lam * gens)
        return printf("final best or evaluations differ from the last generation's\n"), 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s REPORT traj|best|check G N\n", argv[0]);
        return 2;
    }
    cJSON *r = json_parse_file(argv[1]);
    int rc = 0;
    if (!strcmp(argv[2], "traj")) {
        for (const cJSON *x = cJSON_GetObjectItem(r, "per_generation")->child; x; x = x->next)
            printf("%.17g %.17g %.17g %.17g %.17g\n", num(x, "best_fitness"), num(x, "generation_best"),
                   num(x, "sigma"), num(x, "evaluations"), num(x, "tokens"));
        char *w = cJSON_PrintUnformatted(cJSON_GetObjectItem(r, "best_weights"));
        printf("%s\n", w);
        free(w);
    } else if (!strcmp(argv[2], "best"))
        printf("%.6f\n", num(r, "best_fitness"));
    else if (!strcmp(argv[2], "check") && argc == 5)
        rc = check(r, atoi(argv[3]), atoi(argv[4]));
    else
        rc = 2;
    cJSON_Delete(r);
    return rc;
}
