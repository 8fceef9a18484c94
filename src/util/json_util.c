/* json_util.c — see json_util.h. */
#include "json_util.h"

#include <math.h>
#include <stdlib.h>

#include "util.h"

static const char *g_context = "JSON";
static const char *g_section = NULL;

const char *json_set_context(const char *file) {
    const char *prev = g_context;
    g_context = file ? file : "JSON";
    g_section = NULL; /* a new file: no section of the previous one (e.g. after a refusal a test caught) */
    return prev;
}

const char *json_set_section(const char *section) {
    const char *prev = g_section;
    g_section = section && *section ? section : NULL;
    return prev;
}

void json_line_column(const char *text, size_t offset, int *line, int *column) {
    int l = 1, c = 1;
    for (size_t i = 0; i < offset && text[i]; i++) {
        if (text[i] == '\n')
            l++, c = 1;
        else if (((unsigned char)text[i] & 0xC0) != 0x80) /* count characters, not UTF-8 bytes */
            c++;
    }
    *line = l, *column = c;
}

/* Whether text ends inside a string or with a bracket left open (a truncated file). */
static int unclosed(const char *text, size_t n) {
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = text[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"')
            in_str = 1;
        else if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']')
            depth--;
    }
    return in_str || depth > 0;
}

cJSON *json_parse_text(const char *text, size_t n, const char *what) {
    const char *err = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &err, 0);
    if (!root) {
        size_t off = err && err >= text ? (size_t)(err - text) : 0;
        if (off > n) off = n;
        int line, col;
        json_line_column(text, off, &line, &col);
        const char *what_now = unclosed(text, n) ? "the text ends inside an object, array or string: a "
                                                   "'}', ']' or '\"' missing?"
                                                 : "a missing or extra ',', quote or bracket near there?";
        dam_fail("%s:%d:%d: malformed JSON at line %d, column %d (%s)", what, line, col, line, col, what_now);
    }
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
    if (!cJSON_IsString(it)) wrong_type(g_context, g_section, key, "a string");
    return it->valuestring;
}

double json_opt_number(const cJSON *obj, const char *key, double def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsNumber(it)) wrong_type(g_context, g_section, key, "a number");
    return it->valuedouble;
}

int json_opt_int(const cJSON *obj, const char *key, int def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 2.0e9)
        wrong_type(g_context, g_section, key, "an integer");
    return (int)it->valuedouble;
}

int json_opt_bool(const cJSON *obj, const char *key, int def) {
    const cJSON *it = optional(obj, key);
    if (!it) return def;
    if (!cJSON_IsBool(it)) wrong_type(g_context, g_section, key, "true or false");
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
    if (v < lo || v > hi) out_of_range(g_context, g_section, key, v, lo, hi);
    return v;
}
