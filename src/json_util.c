/* json_util.c — see json_util.h. */
#include "json_util.h"

#include <math.h>
#include <stdlib.h>

#include "util.h"

static const char *g_context = "JSON";

const char *json_set_context(const char *file) {
    const char *prev = g_context;
    g_context = file ? file : "JSON";
    return prev;
}

cJSON *json_parse_text(const char *text, size_t n, const char *what) {
    const char *err = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &err, 0);
    if (!root) dam_fail("%s: malformed JSON near byte %zu", what, err ? (size_t)(err - text) : (size_t)0);
    return root;
}

cJSON *json_parse_file(const char *path) {
    size_t n;
    char *text = dam_read_file(path, &n);
    cJSON *root = json_parse_text(text, n, path);
    free(text);
    return root;
}

static const cJSON *required(const cJSON *obj, const char *key, const char *file, const char *section) {
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!it || cJSON_IsNull(it))
        dam_fail("%s: missing required field '%s%s%s'", file, section ? section : "", section ? "." : "",
                 key);
    return it;
}

static DAM_NORETURN void wrong_type(const char *file, const char *section, const char *key,
                                    const char *want) {
    dam_fail("%s: field '%s%s%s': expected %s", file, section ? section : "", section ? "." : "", key, want);
}

const char *json_get_string(const cJSON *obj, const char *key, const char *file, const char *section) {
    const cJSON *it = required(obj, key, file, section);
    if (!cJSON_IsString(it)) wrong_type(file, section, key, "a string");
    return it->valuestring;
}

double json_get_number(const cJSON *obj, const char *key, const char *file, const char *section) {
    const cJSON *it = required(obj, key, file, section);
    if (!cJSON_IsNumber(it)) wrong_type(file, section, key, "a number");
    return it->valuedouble;
}

int64_t json_get_int(const cJSON *obj, const char *key, const char *file, const char *section) {
    double v = json_get_number(obj, key, file, section);
    if (v != floor(v) || fabs(v) > 9.0e15) wrong_type(file, section, key, "an integer");
    return (int64_t)v;
}

static const cJSON *optional(const cJSON *obj, const char *key) {
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return it && !cJSON_IsNull(it) ? it : NULL;
}

const char *json_opt_string(const cJSON *obj, const char *key, const char *def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsString(it)) wrong_type(g_context, NULL, key, "a string");
    return it->valuestring;
}

double json_opt_number(const cJSON *obj, const char *key, double def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsNumber(it)) wrong_type(g_context, NULL, key, "a number");
    return it->valuedouble;
}

int json_opt_int(const cJSON *obj, const char *key, int def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 2.0e9)
        wrong_type(g_context, NULL, key, "an integer");
    return (int)it->valuedouble;
}

int json_opt_bool(const cJSON *obj, const char *key, int def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsBool(it)) wrong_type(g_context, NULL, key, "true or false");
    return cJSON_IsTrue(it);
}

static DAM_NORETURN void out_of_range(const char *file, const char *section, const char *key, int64_t v,
                                      int lo, int hi) {
    dam_fail("%s: field '%s%s%s': %lld is out of range [%d, %d]", file, section ? section : "",
             section ? "." : "", key, (long long)v, lo, hi);
}

int json_get_int_range(const cJSON *obj, const char *key, int lo, int hi, const char *file,
                       const char *section) {
    int64_t v = json_get_int(obj, key, file, section);
    if (v < lo || v > hi) out_of_range(file, section, key, v, lo, hi);
    return (int)v;
}

int json_opt_int_range(const cJSON *obj, const char *key, int def, int lo, int hi) {
    int v = json_opt_int(obj, key, def);
    if (v < lo || v > hi) out_of_range(g_context, NULL, key, v, lo, hi);
    return v;
}
