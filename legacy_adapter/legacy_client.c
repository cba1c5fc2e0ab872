#include "legacy_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

struct legacy_client {
    httpc *h;
    const char *base;
    long timeout_ms;
    char tasks_url[1024];
    char health_url[1024];
};

typedef struct call {
    legacy_cb cb;
    void *arg;
    bool submit;
} call;

legacy_client *legacy_client_new(httpc *h, const char *base_url, long timeout_ms)
{
    legacy_client *lc = calloc(1, sizeof(*lc));
    if (!lc) return NULL;
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/') n--; /* "http://x/" and "http://x" alike */
    lc->h = h;
    lc->base = base_url;
    lc->timeout_ms = timeout_ms;
    snprintf(lc->tasks_url, sizeof(lc->tasks_url), "%.*s/tasks", (int)n, base_url);
    snprintf(lc->health_url, sizeof(lc->health_url), "%.*s/health", (int)n, base_url);
    return lc;
}

void legacy_client_free(legacy_client *lc) { free(lc); }

static void on_done(const httpc_response *resp, void *arg)
{
    call *c = arg;
    legacy_result r = {LEGACY_OK, resp->status, -1, NULL};
    char detail[300];
    json_t *doc = NULL;

    if (resp->error == HTTPC_ETIMEOUT) {
        r.outcome = LEGACY_TIMEOUT;
        r.detail = "the legacy Queue Service did not answer in time";
    } else if (resp->error != HTTPC_OK) {
        r.outcome = LEGACY_UNREACHABLE;
        snprintf(detail, sizeof(detail), "the legacy Queue Service is unreachable: %s",
                 resp->errmsg ? resp->errmsg : "transfer failed");
        r.detail = detail;
    } else if (resp->status == 409) {
        r.outcome = LEGACY_CONFLICT;
        r.detail = "the legacy Queue Service already has this eval_id";
    } else if (resp->status < 200 || resp->status > 299) {
        r.outcome = LEGACY_BAD_STATUS;
        doc = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *msg = json_string_value(json_object_get(doc, "message"));
        snprintf(detail, sizeof(detail), "the legacy Queue Service answered %ld%s%.200s", resp->status,
                 msg ? ": " : "", msg ? msg : "");
        r.detail = detail;
    } else if (c->submit) {
        doc = json_loadb(resp->body, resp->body_len, 0, NULL);
        json_t *pos = json_object_get(doc, "position");
        if (!json_is_object(doc)) {
            r.outcome = LEGACY_BAD_REPLY;
            r.detail = "the legacy Queue Service answered with something that is not a JSON object";
        } else {
            r.position = json_is_integer(pos) ? (long long)json_integer_value(pos) : -1;
        }
    }
    c->cb(&r, c->arg);
    json_decref(doc);
    free(c);
}

static httpc_req *start(legacy_client *lc, const char *method, const char *url, const char *body,
                        size_t len, bool submit, legacy_cb cb, void *arg)
{
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: application/json", NULL};
    char err[256];
    call *c = malloc(sizeof(*c));
    if (!c) return NULL;
    c->cb = cb;
    c->arg = arg;
    c->submit = submit;
    httpc_opts o = {
        .method = method,
        .url = url,
        .body = body,
        .body_len = len,
        .headers = headers,
        .timeout_ms = lc->timeout_ms,
        .max_response_bytes = 64 * 1024,
    };
    httpc_req *r = httpc_start(lc->h, &o, on_done, c, err);
    if (!r) free(c);
    return r;
}

httpc_req *legacy_submit(legacy_client *lc, const char *eval_id, const char *code, size_t code_len,
                         const char *language, const char *engine, int timeout,
                         const char *priority, legacy_cb cb, void *arg)
{
    json_t *o = json_pack("{s:s, s:s#, s:s, s:s, s:i, s:s}", "eval_id", eval_id, "code", code,
                          code_len, "language", language, "engine", engine, "timeout", timeout,
                          "priority", priority);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    httpc_req *r = body ? start(lc, "POST", lc->tasks_url, body, strlen(body), true, cb, arg) : NULL;
    free(body);
    json_decref(o);
    return r;
}

httpc_req *legacy_health(legacy_client *lc, legacy_cb cb, void *arg)
{
    return start(lc, "GET", lc->health_url, NULL, 0, false, cb, arg);
}
