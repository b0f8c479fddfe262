#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
    const char *p;
    char *err;
    int errlen;
    int depth;
};

static void fail(struct parser *ps, const char *what) {
    if (ps->err[0] == '\0') snprintf(ps->err, ps->errlen, "%s near \"%.20s\"", what, ps->p);
}

static void skip_ws(struct parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r') ps->p++;
}

static struct json *new_value(enum json_kind kind) {
    struct json *v = calloc(1, sizeof *v);
    if (v) v->kind = kind;
    return v;
}

static struct json *parse_value(struct parser *ps);

static char *parse_string_raw(struct parser *ps) {
    if (*ps->p != '"') {
        fail(ps, "expected a string");
        return NULL;
    }
    ps->p++;
    size_t cap = 16, len = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    while (*ps->p != '"') {
        char c = *ps->p;
        if (c == '\0' || (unsigned char)c < 0x20) {
            fail(ps, "unterminated string");
            free(out);
            return NULL;
        }
        if (c == '\\') {
            ps->p++;
            switch (*ps->p) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            default:
                /* \u escapes are not needed for the simulator's identifiers. */
                fail(ps, "unsupported escape in string");
                free(out);
                return NULL;
            }
        }
        if (len + 2 > cap) {
            cap *= 2;
            char *grown = realloc(out, cap);
            if (!grown) {
                free(out);
                return NULL;
            }
            out = grown;
        }
        out[len++] = c;
        ps->p++;
    }
    ps->p++;
    out[len] = '\0';
    return out;
}

static struct json *parse_container(struct parser *ps, int object) {
    struct json *v = new_value(object ? JSON_OBJECT : JSON_ARRAY);
    if (!v) return NULL;
    if (++ps->depth > 32) {
        fail(ps, "nesting too deep");
        json_free(v);
        return NULL;
    }
    ps->p++;
    skip_ws(ps);
    char close = object ? '}' : ']';
    struct json **tail = &v->child;
    if (*ps->p == close) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (object) {
            key = parse_string_raw(ps);
            if (!key) break;
            skip_ws(ps);
            if (*ps->p != ':') {
                fail(ps, "expected ':'");
                free(key);
                break;
            }
            ps->p++;
        }
        struct json *item = parse_value(ps);
        if (!item) {
            free(key);
            break;
        }
        item->key = key;
        *tail = item;
        tail = &item->next;
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            ps->depth--;
            return v;
        }
        fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
        break;
    }
    json_free(v);
    return NULL;
}

static struct json *parse_value(struct parser *ps) {
    skip_ws(ps);
    const char *p = ps->p;
    if (*p == '{') return parse_container(ps, 1);
    if (*p == '[') return parse_container(ps, 0);
    if (*p == '"') {
        char *s = parse_string_raw(ps);
        if (!s) return NULL;
        struct json *v = new_value(JSON_STRING);
        if (!v) {
            free(s);
            return NULL;
        }
        v->string = s;
        return v;
    }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        char *end;
        long long n = strtoll(p, &end, 10);
        if (*end == '.' || *end == 'e' || *end == 'E') {
            fail(ps, "only integers are supported");
            return NULL;
        }
        ps->p = end;
        struct json *v = new_value(JSON_NUMBER);
        if (v) v->number = n;
        return v;
    }
    if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
        struct json *v = new_value(JSON_BOOL);
        if (v) v->number = (*p == 't');
        ps->p += (*p == 't') ? 4 : 5;
        return v;
    }
    if (strncmp(p, "null", 4) == 0) {
        ps->p += 4;
        return new_value(JSON_NULL);
    }
    fail(ps, "unexpected character");
    return NULL;
}

struct json *json_parse(const char *text, char *err, int errlen) {
    struct parser ps = {text, err, errlen, 0};
    err[0] = '\0';
    struct json *v = parse_value(&ps);
    if (!v) {
        fail(&ps, "out of memory");
        return NULL;
    }
    skip_ws(&ps);
    if (*ps.p != '\0') {
        fail(&ps, "trailing characters");
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(struct json *v) {
    while (v) {
        struct json *next = v->next;
        json_free(v->child);
        free(v->string);
        free(v->key);
        free(v);
        v = next;
    }
}

const struct json *json_get(const struct json *object, const char *key) {
    if (!object || object->kind != JSON_OBJECT) return NULL;
    for (const struct json *m = object->child; m; m = m->next)
        if (strcmp(m->key, key) == 0) return m;
    return NULL;
}
