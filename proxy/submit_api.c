/* submit_api — POST /api/eval: the body checked, parsed and dispatched. */
#include "submit_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "dispatch.h"
#include "pserver.h"
#include "reply.h"
#include "submission.h"

static void on_submitted(const dispatch_result *res, void *arg)
{
    preq *r = arg;
    r->path = res->path;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    if (res->path != PATH_NONE) evhttp_add_header(out, "X-Turnout-Path", route_path_names[res->path]);
    if (res->retry_after > 0) {
        char n[16];
        snprintf(n, sizeof(n), "%d", res->retry_after);
        evhttp_add_header(out, "Retry-After", n);
    }
    px_finish_text(r, res->status, res->body, res->body_len);
}

void submit_api_handle(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    const char *sticky = NULL;
    if (!px_accept_json_post(p, req, RT_SUBMIT, t0, "use POST /api/eval with a JSON body", &sticky)) return;
    preq *r = px_req_new(p, req, RT_SUBMIT, t0);
    if (!r) {
        px_count_reject(p, RJ_OOM);
        px_reply_error(p, req, RT_SUBMIT, t0, 503, "out_of_memory", "the proxy is short of memory; retry shortly", 1);
        return;
    }
    sub_error serr;
    const char *text = len ? (const char *)evbuffer_pullup(body, -1) : "";
    if (submission_parse(text, len, &p->cfg, &r->sub, &serr) != 0) {
        px_count_reject(p, serr.status == 400 ? RJ_BAD_JSON : RJ_INVALID_FIELD);
        px_finish_error(r, serr.status, serr.code, serr.message, 0);
        return;
    }
    dispatch_start(p, &r->sub, sticky, on_submitted, r);
}

