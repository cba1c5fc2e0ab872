#include "jsafe.h"

#include <string.h>

#include <jansson.h>

#include "jsonw.h"

json_t *jsafe_stringn(const char *s, size_t n)
{
    if (!s) return json_null();
    json_t *v = json_stringn(s, n);
    if (v) return v;
    /* not UTF-8 (or out of memory): jsonw writes it with U+FFFD in place
     * of each bad byte, and jansson reads that back */
    char stack[512];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_string(&w, s, n);
    if (!jw_failed(&w)) v = json_loadb(jw_text(&w), jw_len(&w), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    jw_free(&w);
    return v;
}

json_t *jsafe_string(const char *s)
{
    return s ? jsafe_stringn(s, strlen(s)) : json_null();
}
