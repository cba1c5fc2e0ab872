/* health_api — the probes: /healthz (the process answers), /readyz (Redis
 * and the legacy backend answer), /metrics, and the built-in page. */
#include "health_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "conns.h"
#include "backend.h"
#include "metrics.h"
#include "pserver.h"
#include "rclient.h"
#include "reply.h"
#include "util.h"

static void readyz_done(preq *r)
{
    if (--r->checks_left > 0) return;
    bool ok = r->redis_ok && r->legacy_ok;
    json_t *o = json_pack("{s:s, s:s, s:s}", "status", ok ? "ready" : "not_ready", "redis",
                          r->redis_ok ? "up" : "down", "legacy", r->legacy_ok ? "up" : "down");
    if (o && !ok) {
        json_t *down = json_array();
        if (!r->redis_ok) json_array_append_new(down, json_string("redis"));
        if (!r->legacy_ok) json_array_append_new(down, json_string("legacy"));
        json_object_set_new(o, "down", down);
    }
    px_finish_json(r, ok ? 200 : 503, o);
    json_decref(o);
}

static void on_ready_redis(struct redisReply *reply, const char *err, void *arg)
{
    preq *r = arg;
    (void)err;
    r->redis_ok = reply && reply->type == REDIS_REPLY_STATUS;
    readyz_done(r);
}

static void on_ready_legacy(const bk_result *res, void *arg)
{
    preq *r = arg;
    r->legacy_ok = res->outcome == BK_OK;
    readyz_done(r);
}

void health_api_readyz(proxy *p, struct evhttp_request *req, double t0)
{
    preq *r = px_req_new(p, req, RT_PROBE, t0);
    if (!r) {
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "the proxy is short of memory", 1);
        return;
    }
    r->checks_left = 3; /* two checks + this function's own hold */
    static const char *ping[] = {"PING"};
    static const size_t pinglen[] = {4};
    if (rclient_command(p->broker, on_ready_redis, r, 1, ping, pinglen) != 0) {
        r->redis_ok = false;
        r->checks_left--;
    }
    if (!bk_health(p->paths[PATH_LEGACY], on_ready_legacy, r)) {
        r->legacy_ok = false;
        r->checks_left--;
    }
    readyz_done(r);
}

void health_api_metrics(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (metrics_render(p->m.reg, out) != 0) {
        px_reply_error(p, req, RT_PROBE, t0, 503, "out_of_memory", "could not render metrics", 1);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

/* ---------- the built-in page ---------- */

extern const unsigned char dashboard_page[]; /* build/gen/dashboard_page.c */
extern const size_t dashboard_page_len;

void health_api_dashboard(proxy *p, struct evhttp_request *req, double t0)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET && evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        px_reply_method_not_allowed(p, req, RT_PROBE, t0, "GET", "use GET /dashboard");
        return;
    }
    evhttp_add_header(out, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    /* everything is in the page itself: nothing else may load */
    evhttp_add_header(out, "Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evbuffer_add_reference(evhttp_request_get_output_buffer(req), dashboard_page, dashboard_page_len, NULL, NULL);
    conns_reply_out(p->conns, req);
    evhttp_send_reply(req, 200, "OK", NULL);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

void health_api_healthz(proxy *p, struct evhttp_request *req, double t0)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    conns_reply_out(p->conns, req);
    util_reply_json(req, 200, ok, sizeof(ok) - 1);
    px_count_reply(p, RT_PROBE, PATH_NONE, 200, t0);
}

