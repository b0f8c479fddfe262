/* A small JSON reader for the simulator's configuration file: enough of RFC 8259
 * for objects, arrays, strings, integers and literals. */
#ifndef SIM_JSON_H
#define SIM_JSON_H

enum json_kind { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
    enum json_kind kind;
    long long number; /* JSON_NUMBER (integers only), JSON_BOOL */
    char *string;     /* JSON_STRING */
    char *key;        /* set when this value is a member of an object */
    struct json *child; /* first element or member */
    struct json *next;  /* next sibling */
};

/* Parses text; returns NULL and writes a message into err on malformed input. */
struct json *json_parse(const char *text, char *err, int errlen);
void json_free(struct json *v);
/* Member of an object by key, or NULL. */
const struct json *json_get(const struct json *object, const char *key);

#endif
