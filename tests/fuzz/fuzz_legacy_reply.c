/* fuzz_legacy_reply — the proxy's reading of the legacy Queue Service's
 * replies (legacy_parse_reply, what every legacy_client callback sees) and
 * legacy_normalized_status on the parsed document.
 *
 * Input layout (4 header bytes, then the body):
 *   byte 0     call kind: % 3 -> 0 submit (POST /tasks), 1 health, 2 task
 *              (GET|DELETE /tasks/{id}, GET /status)
 *   byte 1     transfer: < 0xf0 -> HTTPC_OK (a response arrived); else the
 *              low nibble % 6 is the httpc error, bit 3 set -> errmsg NULL
 *   bytes 2-3  HTTP status, big-endian (0..65535: 200, 201, 404, 409, 500,
 *              and everything a broken server might send; passed even
 *              with a transfer error, as httpc may have seen a status)
 *   rest       the response body, not NUL-terminated
 * Shorter inputs are padded with zero bytes. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "httpc.h"
#include "legacy_http.h"

#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "fuzz_legacy_reply: invariant failed: %s (line %d)\n", #cond, __LINE__); \
            __builtin_trap();                                                                        \
        }                                                                                            \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_status(json_t *doc)
{
    static const char *const known[] = {"queued", "running", "completed", "failed", "timeout", "cancelled"};
    const char *st = bk_normalized_status(doc);
    if (!st) return;
    bool ok = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) ok = ok || strcmp(st, known[i]) == 0;
    CHECK(ok);
    /* Only a doc that has a string "status" can have a known one. */
    CHECK(json_is_string(json_object_get(doc, "status")));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t head[4] = {0, 0, 0, 0};
    memcpy(head, data, size < 4 ? size : 4);
    const char *body = size > 4 ? (const char *)data + 4 : NULL;
    size_t len = size > 4 ? size - 4 : 0;

    enum legacy_call_kind kind = (enum legacy_call_kind)(head[0] % 3);
    int terr = head[1] < 0xf0 ? HTTPC_OK : (head[1] & 0x07) % 6;
    const char *errmsg = terr != HTTPC_OK && !(head[1] & 0x08) ? "Connection refused" : NULL;
    long status = (long)(head[2] << 8 | head[3]);

    bk_result r;
    json_t *doc = (json_t *)&r; /* must be overwritten */
    char detail[BK_DETAIL_MAX];
    memset(detail, 0x5a, sizeof(detail));
    legacy_parse_reply(kind, terr, errmsg, status, body, len, &r, &doc, detail);

    CHECK(r.doc == doc);
    CHECK(r.status == status);
    CHECK(doc == NULL || (terr == HTTPC_OK && len > 0));
    CHECK(r.position == -1 || r.outcome == BK_OK);
    CHECK((r.detail == NULL) == (r.outcome == BK_OK));
    if (r.detail == detail) CHECK(memchr(detail, '\0', sizeof(detail)) != NULL);
    else if (r.detail) CHECK(strlen(r.detail) > 0 || r.outcome == BK_CONFLICT);

    switch (r.outcome) {
    case BK_OK:
        CHECK(terr == HTTPC_OK && status >= 200 && status <= 299 && status != 409);
        CHECK(kind == LEGACY_CALL_HEALTH || json_is_object(doc));
        if (kind == LEGACY_CALL_HEALTH) CHECK(r.position == -1);
        else if (json_is_integer(json_object_get(doc, "position")))
            CHECK(r.position == json_integer_value(json_object_get(doc, "position")));
        else CHECK(r.position == -1);
        break;
    case BK_TIMEOUT: CHECK(terr == HTTPC_ETIMEOUT); break;
    case BK_UNREACHABLE:
        CHECK(terr != HTTPC_OK && terr != HTTPC_ETIMEOUT && terr != HTTPC_ETOOBIG && r.detail == detail);
        break;
    case BK_CONFLICT: CHECK(terr == HTTPC_OK && status == 409); break;
    case BK_NOT_FOUND: CHECK(terr == HTTPC_OK && status == 404 && kind == LEGACY_CALL_TASK); break;
    case BK_BAD_STATUS: CHECK(terr == HTTPC_OK && (status < 200 || status > 299) && r.detail == detail); break;
    case BK_BAD_REPLY: /* a reply too large for the protocol is a bad reply too */
        CHECK(terr == HTTPC_ETOOBIG || (terr == HTTPC_OK && kind != LEGACY_CALL_HEALTH && !json_is_object(doc)));
        break;
    case BK_INTERNAL:
    case BK_DOWN:
    case BK_REFUSED:
    case BK_FULL: CHECK(!"legacy_parse_reply reports only the HTTP outcomes"); break;
    }

    /* The callers read the task state off the doc whatever the outcome
     * (status and cancel do so on 200 and 409 alike). */
    check_status(doc);
    if (json_is_object(doc)) {
        /* GET /status-like wrappers and lists: look one level down too. */
        const char *k;
        json_t *v;
        json_object_foreach(doc, k, v) check_status(v);
    } else if (json_is_array(doc)) {
        size_t i;
        json_t *v;
        json_array_foreach(doc, i, v) check_status(v);
    }
    json_decref(doc);
    return 0;
}
