/* tok_unicode.c — the UTF-8 and Unicode facts the tokenizer needs: validation, lossy repair as
 * Rust's String::from_utf8_lossy does it (what `tokenizers` decodes with), White_Space and NFC. The
 * Unicode data (general categories, compositions) come from utf8proc; the regex classes (\p{L},
 * \p{N}, \s) of the pre-tokenizers are PCRE2's own (compiled with PCRE2_UTF | PCRE2_UCP). */
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "tokenizer.h"
#include "util.h"

/* Byte length of a well-formed sequence starting at s[i..n), 0 when ill-formed. The second-byte
 * ranges are those of the Unicode "well-formed UTF-8" table (no overlongs, no surrogates). */
static size_t utf8_seq_len(const unsigned char *s, size_t i, size_t n, size_t *valid_prefix) {
    unsigned c = s[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
        *valid_prefix = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c == 0xE0) {
        len = 3;
        lo = 0xA0;
    } else if (c >= 0xE1 && c <= 0xEC)
        len = 3;
    else if (c == 0xED) {
        len = 3;
        hi = 0x9F;
    } else if (c >= 0xEE && c <= 0xEF)
        len = 3;
    else if (c == 0xF0) {
        len = 4;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3)
        len = 4;
    else if (c == 0xF4) {
        len = 4;
        hi = 0x8F;
    } else {
        *valid_prefix = 1;
        return 0;
    } /* a lone continuation byte or an impossible lead */
    size_t k = 1;
    for (; k < len; k++) {
        if (i + k >= n) break;
        unsigned b = s[i + k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) break;
    }
    *valid_prefix = k; /* the maximal subpart: replaced by one U+FFFD */
    return k == len ? len : 0;
}

size_t tok_utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, sub;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t len = utf8_seq_len(u, i, n, &sub);
        if (!len) return i;
        i += len;
    }
    return n;
}

void tok_utf8_lossy_append(TokBuf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0, sub;
    while (i < n) {
        size_t len = u[i] < 0x80 ? 1 : utf8_seq_len(u, i, n, &sub);
        if (len) {
            i += len;
            continue;
        }
        tokbuf_append(b, s + run, i - run);
        tokbuf_append(b, "\xEF\xBF\xBD", 3);
        i += sub;
        run = i;
    }
    tokbuf_append(b, s + run, n - run);
}

uint32_t tok_utf8_decode(const char *s, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) {
        *len = 1;
        return u[0];
    }
    if (u[0] < 0xE0) {
        *len = 2;
        return ((u[0] & 0x1Fu) << 6) | (u[1] & 0x3Fu);
    }
    if (u[0] < 0xF0) {
        *len = 3;
        return ((u[0] & 0x0Fu) << 12) | ((u[1] & 0x3Fu) << 6) | (u[2] & 0x3Fu);
    }
    *len = 4;
    return ((u[0] & 0x07u) << 18) | ((u[1] & 0x3Fu) << 12) | ((u[2] & 0x3Fu) << 6) | (u[3] & 0x3Fu);
}

int tok_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space (what Rust's char::is_whitespace tests): the separators Zs, Zl, Zp and the
 * controls TAB..CR and NEL. */
int tok_is_whitespace(uint32_t c) {
    if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
    if (c == 0x85) return 1;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

/* Code points that NFC leaves alone whatever surrounds them, for the quick check: everything below
 * U+0300 (no combining mark, no composition's second character there), CJK unified ideographs and
 * Hangul syllables (ccc 0, no decomposition of their own that NFC would change; a syllable followed
 * by a trailing jamo is caught at the jamo, which is not in these ranges). */
static int nfc_is_stable(uint32_t cp) {
    return cp < 0x300 || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) ||
           (cp >= 0xAC00 && cp <= 0xD7A3);
}

size_t tok_nfc_quick_check(const char *s, size_t n) {
    size_t i = 0, len;
    while (i < n) {
        if ((unsigned char)s[i] < 0xCC) { /* ASCII, a continuation byte or a lead byte below U+0300 */
            i++;
            continue;
        }
        if (!nfc_is_stable(tok_utf8_decode(s + i, &len))) return i;
        i += len;
    }
    return n;
}

int tok_nfc_append(TokBuf *out, const char *s, size_t n) {
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (len < 0) return -1;
    tokbuf_append(out, (const char *)nfc, (size_t)len);
    free(nfc);
    return 0;
}
