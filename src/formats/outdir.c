/* outdir.c — see outdir.h. */
#include "outdir.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* Inside <dir>.tmp while it is being built: what made it, so that a stale one may be removed. */
#define PARTIAL_MARKER ".dam_dist_partial"

int outdir_is_complete(const char *dir, const char *marker) {
    char *p = dam_path_join(dir, marker);
    int ok = 0;
    if (dam_file_exists(p)) {
        char *text = dam_read_file(p, NULL);
        cJSON *j = cJSON_Parse(text);
        const cJSON *by = cJSON_GetObjectItemCaseSensitive(j, "written_by");
        ok = cJSON_IsString(by) && !strncmp(by->valuestring, "dam_dist", 8) &&
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "complete"));
        cJSON_Delete(j);
        free(text);
    }
    free(p);
    return ok;
}

void outdir_write_marker(cJSON *report, const char *written_by, const char *path) {
    cJSON_AddStringToObject(report, "written_by", written_by);
    cJSON_AddBoolToObject(report, "complete", 1);
    char *text = cJSON_Print(report);
    dam_write_file_atomic(path, text, strlen(text));
    free(text);
    cJSON_Delete(report);
}

/* The marker files of every command that writes a directory, and what an old "dam_dist" marker
 * (before markers named their command) meant: evolve left evolve_report.json beside it, finetune
 * recorded "command": "finetune" in its config, the rest was a DAM run. */
static const char *const known_markers[] = {"dam_report.json", "merge_report.json", "dam_toy.json", NULL};

static char *legacy_owner(const char *dir, const cJSON *report) {
    char *ev = dam_path_join(dir, "evolve_report.json");
    int evolve = dam_file_exists(ev);
    free(ev);
    const cJSON *cmd =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(report, "config"), "command");
    if (evolve) return dam_strdup("dam_dist evolve");
    if (cJSON_IsString(cmd) && !strcmp(cmd->valuestring, "finetune")) return dam_strdup("dam_dist finetune");
    return dam_strdup("dam_dist train");
}

char *outdir_owner(const char *dir) {
    for (const char *const *m = known_markers; *m; m++) {
        if (!outdir_is_complete(dir, *m)) continue;
        char *p = dam_path_join(dir, *m), *text = dam_read_file(p, NULL);
        cJSON *j = cJSON_Parse(text);
        const char *by = cJSON_GetObjectItemCaseSensitive(j, "written_by")->valuestring;
        char *owner = strcmp(by, "dam_dist") ? dam_strdup(by) : legacy_owner(dir, j);
        cJSON_Delete(j);
        free(text), free(p);
        return owner;
    }
    return NULL;
}

static int is_partial(const char *dir) {
    char *p = dam_path_join(dir, PARTIAL_MARKER);
    int ok = dam_file_exists(p);
    free(p);
    return ok;
}

static int is_empty_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n == 0;
}

void outdir_check_path(const OutDir *o, const char *path, const char *what) {
    char *real = dam_realpath_lenient(path);
    for (int i = 0; i < o->n_inputs; i++) {
        if (!o->inputs[i]) continue;
        char *in = dam_realpath_lenient(o->inputs[i]);
        if (dam_path_within(in, real))
            dam_fail(
                "%s %s %s the input %s; dam_dist never writes into or over its inputs (choose another %s)",
                what, path, strcmp(in, real) ? "contains" : "is", o->inputs[i], what);
        if (dam_path_within(real, in))
            dam_fail(
                "%s %s lies inside the input %s; dam_dist never writes into its inputs (choose another %s)",
                what, path, o->inputs[i], what);
        free(in);
    }
    free(real);
}

/* <dir>.tmp or <dir>.old left by an earlier run: removable when dam_dist made it. */
static void check_leftover(const OutDir *o, const char *suffix) {
    char *p = dam_asprintf("%s%s", o->dir, suffix);
    struct stat st;
    if (lstat(p, &st) == 0 && !o->force &&
        !(S_ISDIR(st.st_mode) && (is_partial(p) || outdir_is_complete(p, o->marker))))
        dam_fail("%s exists and was not made by dam_dist; it would be removed: move it away or pass --force",
                 p);
    free(p);
}

void outdir_check(const OutDir *o) {
    const char *suffixes[] = {"", ".tmp", ".old"};
    for (int i = 0; i < 3; i++) {
        char *p = dam_asprintf("%s%s", o->dir, suffixes[i]);
        outdir_check_path(o, p, o->what);
        free(p);
    }
    struct stat st;
    if (lstat(o->dir, &st) == 0 && !o->force) {
        if (!S_ISDIR(st.st_mode))
            dam_fail("%s %s exists and is not a directory; choose another %s or pass --force to replace it",
                     o->what, o->dir, o->what);
        char *owner = is_empty_dir(o->dir) ? NULL : outdir_owner(o->dir);
        if (!is_empty_dir(o->dir) && !owner)
            dam_fail(
                "%s %s exists and is not a complete dam_dist output (no %s saying so); choose another %s or "
                "pass --force to replace it",
                o->what, o->dir, o->marker, o->what);
        if (owner && strcmp(owner, o->written_by))
            dam_fail("%s %s holds the complete output of `%s`, which `%s` would replace: choose another %s "
                     "or pass --force to replace it",
                     o->what, o->dir, owner, o->written_by, o->what);
        free(owner);
    }
    check_leftover(o, ".tmp");
    check_leftover(o, ".old");
}

char *outdir_begin(const OutDir *o) {
    outdir_check(o);
    char *tmp = dam_asprintf("%s.tmp", o->dir);
    if (dam_rm_rf(tmp) != 0) dam_fail("%s: cannot remove a stale partial output (%s)", tmp, strerror(errno));
    dam_mkdir_p(tmp);
    char *marker = dam_path_join(tmp, PARTIAL_MARKER);
    char *text =
        dam_asprintf("{\"written_by\": \"dam_dist\", \"for\": \"%s\", \"complete\": false}\n", o->what);
    dam_write_file_atomic(marker, text, strlen(text));
    free(marker), free(text);
    return tmp;
}

void outdir_commit(const OutDir *o, const char *tmp) {
    outdir_check(o);
    char *marker = dam_path_join(tmp, PARTIAL_MARKER);
    unlink(marker);
    free(marker);
    struct stat st;
    if (lstat(o->dir, &st) != 0) {
        if (rename(tmp, o->dir) != 0)
            dam_fail("%s: cannot rename %s into place (%s)", o->dir, tmp, strerror(errno));
        return;
    }
    if (!S_ISDIR(st.st_mode) && unlink(o->dir) != 0) /* --force over a file */
        dam_fail("%s: cannot remove (%s)", o->dir, strerror(errno));
    if (S_ISDIR(st.st_mode) && renameat2(AT_FDCWD, tmp, AT_FDCWD, o->dir, RENAME_EXCHANGE) == 0) {
        dam_rm_rf(tmp); /* now the previous output */
        return;
    }
    char *old = dam_asprintf("%s.old", o->dir); /* no exchange here: move aside, then in */
    dam_rm_rf(old);
    if (S_ISDIR(st.st_mode) && rename(o->dir, old) != 0)
        dam_fail("%s: cannot move the previous output aside to %s (%s)", o->dir, old, strerror(errno));
    if (rename(tmp, o->dir) != 0)
        dam_fail("%s: cannot rename %s into place (%s); the previous output is %s", o->dir, tmp,
                 strerror(errno), old);
    dam_rm_rf(old);
    free(old);
}

/* Whose checkpoints ckpt_dir holds, from their file names; NULL when none (or no directory). */
static const char *checkpoints_owner(const char *ckpt_dir) {
    DIR *d = opendir(ckpt_dir);
    if (!d) return NULL;
    const char *owner = NULL;
    for (struct dirent *e; (e = readdir(d)) && !owner;) {
        size_t n = strlen(e->d_name);
        if (!strcmp(e->d_name, "evolve_state.bin"))
            owner = "dam_dist evolve";
        else if (!strncmp(e->d_name, "step_", 5) && n > 3 && !strcmp(e->d_name + n - 3, ".h5"))
            owner = "dam_dist train";
    }
    closedir(d);
    return owner;
}

void outdir_check_checkpoints(const OutDir *o, const char *ckpt_dir, const char *what) {
    outdir_check_path(o, ckpt_dir, what);
    const char *owner = checkpoints_owner(ckpt_dir);
    if (owner && strcmp(owner, o->written_by) && !o->force)
        dam_fail("%s %s holds the checkpoints of `%s`; `%s` keeps its own: choose another %s or pass --force",
                 what, ckpt_dir, owner, o->written_by, what);
}

char *outdir_default_ckpt_dir(const char *out) { return dam_asprintf("%s" OUTDIR_CKPT_SUFFIX, out); }

char *outdir_default_metrics_file(const char *out) { return dam_asprintf("%s" OUTDIR_METRICS_SUFFIX, out); }
