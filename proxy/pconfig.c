#include "pconfig.h"

#include "rclient.h"
#include "util.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define F(field) offsetof(proxy_settings, field)

const cfg_option pconfig_table[] = {
    {"PROXY_LISTEN", CFG_ADDR, "127.0.0.1:8080", 0, 0, NULL, F(listen), "address:port to serve", false},
    {"CELERY_ENABLED", CFG_BOOL, "false", 0, 0, NULL, F(celery_enabled), "new path allowed at all", true},
    {"CELERY_PERCENTAGE", CFG_FRACTION, "0", 0, 1, NULL, F(celery_percentage),
     "fraction 0..1 of submissions for the new path", true},
    {"FORCE_LEGACY_QUEUE", CFG_BOOL, "false", 0, 0, NULL, F(force_legacy),
     "kill switch: everything to legacy, beats all else", true},
    {"ROUTING_MODE", CFG_ENUM, "sticky", 0, 0, "sticky|random", F(routing_mode),
     "sticky (hash of the sticky key) or random", true},
    {"ROLLOUT_SALT", CFG_STRING, "turnout", 0, 256, NULL, F(rollout_salt), "salt of the sticky hash", true},
    {"FALLBACK_TO_LEGACY", CFG_BOOL, "true", 0, 0, NULL, F(fallback_to_legacy),
     "a submission the new path cannot take goes to legacy", true},
    {"CELERY_BROKER_URL", CFG_URL, "redis://127.0.0.1:6379/0", 0, 0, "redis", F(broker_url),
     "Redis of the new queue", false},
    {"CELERY_RESULT_BACKEND", CFG_URL, "", 0, 0, "redis", F(result_backend),
     "Redis holding celery-task-meta-* (empty: the broker URL)", false},
    {"CELERY_QUEUE", CFG_STRING, "evaluation", 0, 200, NULL, F(queue), "queue name (kombu list base name)", false},
    {"CELERY_TASK_NAME", CFG_STRING, "tasks.evaluate_code", 0, 200, NULL, F(task_name),
     "task name in the message header", false},
    {"LEGACY_BACKEND", CFG_ENUM, "http", 0, 0, "http|rq", F(legacy_backend),
     "what the legacy side speaks: http (a Queue Service at LEGACY_QUEUE_URL, e.g. turnout-legacyd) or rq "
     "(RQ's own Redis layout at LEGACY_RQ_URL, run by rq worker)", false},
    {"LEGACY_QUEUE_URL", CFG_URL, "http://127.0.0.1:8081", 0, 0, "http|https", F(legacy_url),
     "legacy Queue Service (LEGACY_BACKEND=http)", false},
    {"LEGACY_RQ_URL", CFG_STRING, "", 0, 1024, NULL, F(legacy_rq_url),
     "LEGACY_BACKEND=rq: the Redis RQ uses, redis://host:port/db (may be CELERY_BROKER_URL's server)", false},
    {"LEGACY_RQ_QUEUES", CFG_LIST, "high,default,low", 0, 0, NULL, F(legacy_rq_queues),
     "LEGACY_BACKEND=rq: three RQ queues for priorities 0-2, 3-5 and 6-9 (run rq worker with them in this order)", false},
    {"LEGACY_RQ_FUNCTION", CFG_STRING, "tasks.evaluate_code", 1, 200, NULL, F(legacy_rq_function),
     "LEGACY_BACKEND=rq: the function each job calls, as a dotted import path; called (eval_id, code, language, "
     "timeout=, engine=, priority=)", false},
    {"LEGACY_RQ_SERIALIZER", CFG_ENUM, "pickle", 0, 0, "pickle|json", F(legacy_rq_serializer),
     "LEGACY_BACKEND=rq: pickle (RQ's default) or json (rq worker --serializer rq.serializers.JSONSerializer)", false},
    {"LEGACY_RQ_RESULT_TTL_S", CFG_INT, "86400", 1, 31536000, NULL, F(legacy_rq_result_ttl_s),
     "LEGACY_BACKEND=rq: how long RQ keeps a finished job and its result (the job's result_ttl)", false},
    {"UPSTREAM_API_URL", CFG_URL, "", 0, 0, "http|https", F(upstream_url),
     "if set, every path the proxy does not own is passed through to it", false},
    {"ADMIN_TOKEN", CFG_STRING, "", 0, 1024, NULL, F(admin_token),
     "bearer token for admin writes; empty = admin writes refused", true},
    {"READ_TOKEN", CFG_STRING, "", 0, 1024, NULL, F(read_token),
     "bearer token for the sensitive reads (DLQ entries' args, kwargs and message; shadow mismatch outputs); "
     "ADMIN_TOKEN works too. Without a token those fields are left out; empty = only ADMIN_TOKEN", true},
    {"ALLOWED_HOSTS", CFG_LIST, "", 0, 0, NULL, F(allowed_hosts),
     "Host names the proxy answers (comma list; .example.com = it and every name under it; no ports); another "
     "Host -> 421 host_not_allowed. Empty = any host", true},
    {"ALLOWED_ORIGINS", CFG_LIST, "", 0, 0, NULL, F(allowed_origins),
     "browser origins, besides the proxy's own (scheme + Host), allowed to send writes (POST, PUT, DELETE) to "
     "the proxy's own endpoints: exact scheme://host[:port] items, no *; another origin -> 403 cross_origin", true},
    {"ADMIN_TOKEN_LABEL", CFG_STRING, "admin", 1, 64, NULL, F(admin_token_label),
     "who the admin token stands for in the rollout audit list (an X-Turnout-Actor header adds a name)", false},
    {"MAX_BODY_BYTES", CFG_INT, "2097152", 1024, 67108864, NULL, F(max_body_bytes),
     "larger request body -> 413", false},
    {"ALLOWED_LANGUAGES", CFG_LIST, "python", 0, 0, NULL, F(allowed_languages),
     "comma list of accepted languages", true},
    {"LOG_LEVEL", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", F(log_level), "log threshold", true},
    {"LOG_FORMAT", CFG_ENUM, "logfmt", 0, 0, "logfmt|json", F(log_format), "log line format", true},
    {"PROXY_TLS_CERT", CFG_STRING, "", 0, 4096, NULL, F(tls_cert), "PEM certificate; with the key -> HTTPS", false},
    {"PROXY_TLS_KEY", CFG_STRING, "", 0, 4096, NULL, F(tls_key), "PEM private key; with the certificate -> HTTPS", false},
    {"LEGACY_TIMEOUT_MS", CFG_INT, "5000", 10, 600000, NULL, F(legacy_timeout_ms),
     "deadline of one legacy Queue Service call (-> 504)", false},
    {"LEGACY_MAX_REPLY_BYTES", CFG_INT, "8388608", 65536, 1073741824, NULL, F(legacy_max_reply_bytes),
     "largest legacy Queue Service reply read; a task's reply carries its whole output (the executor keeps up to "
     "EXECUTOR_OUTPUT_LIMIT, 1 MiB by default, and JSON escaping can make it up to 6 times longer). An eval whose "
     "result is larger is finished as failed, its status saying so", false},
    {"UPSTREAM_TIMEOUT_MS", CFG_INT, "30000", 10, 600000, NULL, F(upstream_timeout_ms),
     "pass-through: wait for the upstream's response head (-> 504), and the longest silence of the upstream while "
     "its body streams (the client's response is then cut)", false},
    {"PASSTHROUGH_BUFFER_BYTES", CFG_INT, "262144", 16384, 16777216, NULL, F(passthrough_buffer_bytes),
     "pass-through: response bytes held for one client that reads slower than the upstream sends; past this the "
     "proxy stops reading the upstream until the client catches up", false},
    {"TRUST_FORWARDED_HEADERS", CFG_LIST, "", 0, 0, NULL, F(trust_forwarded_text),
     "pass-through: client-sent forwarding headers kept and extended (x-forwarded-for, x-forwarded-host, "
     "x-forwarded-proto, forwarded, or all); empty = none: the proxy's own values replace them (set it only "
     "behind a proxy of yours that sets them)", false},
    {"FORWARDED_HEADER", CFG_BOOL, "false", 0, 0, NULL, F(forwarded_header),
     "pass-through: also send the standard Forwarded header (RFC 7239) beside the X-Forwarded-* ones", false},
    {"AUTH_URL", CFG_URL, "", 0, 0, "http|https", F(auth_url),
     "forward auth: every request to an endpoint the proxy answers (not /healthz, /readyz, /metrics) is first "
     "checked by a GET here with the client's credentials; 2xx lets it through, 401/403 are passed back, "
     "anything else is 503 (empty: off)", false},
    {"AUTH_TIMEOUT_MS", CFG_INT, "1000", 10, 60000, NULL, F(auth_timeout_ms),
     "forward auth: deadline of one check (-> 503 auth_unavailable)", false},
    {"AUTH_RESPONSE_HEADERS", CFG_LIST, "", 0, 0, NULL, F(auth_response_headers),
     "forward auth: headers of an allowing answer copied into the request (e.g. X-User-Id); a client's own are "
     "always removed", false},
    {"AUTH_STICKY_HEADER", CFG_STRING, "", 0, 100, NULL, F(auth_sticky_header),
     "forward auth: one of AUTH_RESPONSE_HEADERS whose value is the submission's sticky key", false},
    {"AUTH_CACHE_TTL_S", CFG_INT, "0", 0, 300, NULL, F(auth_cache_ttl_s),
     "forward auth: how long a decision is kept, keyed by a SHA-256 of Authorization, Cookie, method and "
     "target (0: each request is checked)", false},
    {"WEBSOCKET_IDLE_TIMEOUT_S", CFG_INT, "60", 1, 86400, NULL, F(websocket_idle_timeout_s),
     "pass-through: a WebSocket (or other Upgrade) tunnel with no byte either way for this long is closed", false},
    {"REDIS_TIMEOUT_MS", CFG_INT, "1000", 10, 60000, NULL, F(redis_timeout_ms),
     "deadline of one Redis command; on expiry the connection is re-made", false},
    {"CLIENT_REQUEST_TIMEOUT_S", CFG_INT, "30", 1, 3600, NULL, F(client_request_timeout_s),
     "a whole request (headers and body) must arrive within this long of the connection's start or its "
     "last reply, else the connection is closed (slow clients counted as rejected client_timeout)", false},
    {"CLIENT_TIMEOUT_S", CFG_INT, "60", 1, 3600, NULL, F(client_timeout_s),
     "a client connection that sends nothing, or takes nothing, for this long is closed", false},
    {"MAX_CLIENT_CONNECTIONS", CFG_INT, "10000", 1, 1000000, NULL, F(max_client_connections),
     "client connections open at once; one more is closed at once (counted as rejected max_connections)", false},
    {"SHUTDOWN_GRACE_S", CFG_INT, "10", 0, 600, NULL, F(shutdown_grace_s),
     "on SIGTERM, how long in-flight requests may take to finish", false},
    {"MAX_IN_FLIGHT", CFG_INT, "10000", 1, 1000000, NULL, F(max_in_flight),
     "requests waiting on a backend at once; beyond -> 503", true},
    {"ROUTE_RECORD_TTL_S", CFG_INT, "604800", 60, 31536000, NULL, F(route_record_ttl_s),
     "how long a route record (turnout:route:<eval_id>) is kept: status, cancel and idempotency work that long", false},
    {"ROUTE_PENDING_MAX", CFG_INT, "10000", 0, 1000000, NULL, F(route_pending_max),
     "route records held in memory while Redis is away (written when it returns); beyond -> dropped and counted", false},
    {"ACCEPT_UNCHECKED_EVAL_IDS", CFG_BOOL, "false", 0, 0, NULL, F(accept_unchecked_eval_ids),
     "while Redis cannot be asked, a submission that brings its own eval_id is refused (503 + Retry-After: it may "
     "be a resubmission); true sends it to legacy unchecked (availability over idempotency: it may run twice)", true},
    {"CELERY_QUEUE_MAX_DEPTH", CFG_INT, "100000", 0, 100000000, NULL, F(queue_max_depth),
     "messages the new queue may hold (all priorities); a submission beyond it falls back to legacy or gets "
     "503 + Retry-After (0: no limit)", true},
    {"COMPLETION_POLL_S", CFG_INT, "2", 1, 3600, NULL, F(completion_poll_s),
     "how often unfinished evals are checked for completion (legacy polled, new path swept)", false},
    {"COMPLETION_POLL_BATCH", CFG_INT, "100", 1, 10000, NULL, F(completion_poll_batch),
     "unfinished evals checked per path per poll", false},
    {"ROLLOUT_STEPS", CFG_STRING, "", 0, 400, NULL, F(rollout_steps_text),
     "canary steps: rising fractions, e.g. 0.1,0.25,0.5,0.9,1.0 (empty: no canary)", false},
    {"ROLLOUT_STEP_INTERVAL_S", CFG_INT, "300", 1, 604800, NULL, F(rollout_step_interval_s),
     "the least time a canary step is held; it passes once this has gone by and every gate passes", false},
    {"GATE_ALPHA", CFG_FRACTION, "0.01", 0.0001, 0.2, NULL, F(gate_alpha),
     "canary: chance that a whole canary run rolls back a healthy new path (shared among its steps and gates; "
     "each gate passes at this confidence)", false},
    {"GATE_MIN_SAMPLES", CFG_INT, "50", 1, 100000000, NULL, F(gate_min_samples),
     "canary: evals needed on each path before a gate judges", false},
    {"GATE_SYSTEM_ERROR_MARGIN", CFG_FRACTION, "0.002", 0, 1, NULL, F(gate_margin[GATE_SYSTEM]),
     "canary: roll back when the new path's system-error ratio is surely above legacy's by more than this", false},
    {"GATE_SYSTEM_ERROR_PASS_MARGIN", CFG_FRACTION, "0.01", 0.0001, 1, NULL, F(gate_pass_margin[GATE_SYSTEM]),
     "canary: a step passes this gate once the new path's system-error ratio is surely below legacy's + this", false},
    {"GATE_PROGRAM_FAILURE_MARGIN", CFG_FRACTION, "0", 0, 1, NULL, F(gate_margin[GATE_PROGRAM]),
     "canary: roll back when programs surely fail more often on the new path than on legacy, by more than this", false},
    {"GATE_PROGRAM_FAILURE_PASS_MARGIN", CFG_FRACTION, "0.05", 0.0001, 1, NULL, F(gate_pass_margin[GATE_PROGRAM]),
     "canary: a step passes this gate once the new path's program-failure ratio is surely below legacy's + this", false},
    {"GATE_LATENCY_QUANTILE", CFG_FRACTION, "0.9", 0.5, 0.99, NULL, F(gate_latency_quantile),
     "canary: the legacy completion-time quantile that is the latency gate's threshold", false},
    {"GATE_LATENCY_MARGIN", CFG_FRACTION, "0.02", 0, 1, NULL, F(gate_margin[GATE_LATENCY]),
     "canary: roll back when the share of new-path evals slower than that threshold is surely above legacy's "
     "share by more than this", false},
    {"GATE_LATENCY_PASS_MARGIN", CFG_FRACTION, "0.05", 0.0001, 1, NULL, F(gate_pass_margin[GATE_LATENCY]),
     "canary: a step passes this gate once that share is surely below legacy's + this (this and "
     "GATE_LATENCY_MARGIN both 1: the gate is off)", false},
    {"ROLLOUT_ROLLBACK_TO", CFG_ENUM, "zero", 0, 0, "zero|last_good", F(rollout_rollback_to),
     "where a failed gate sends the percentage: 0, or the last step that passed", false},
    {"SHADOW_PERCENTAGE", CFG_FRACTION, "0", 0, 1, NULL, F(shadow_percentage),
     "fraction of legacy-routed submissions also run on the new path as shadow-<eval_id> and compared", false},
    {"SHADOW_MISMATCHES_KEPT", CFG_INT, "100", 1, 10000, NULL, F(shadow_mismatches_kept),
     "shadow mismatches kept for GET /admin/shadow/mismatches", false},
    {"TURNOUT_ENV_FILE", CFG_STRING, "", 0, 4096, NULL, F(env_file),
     "KEY=value file re-read on SIGHUP", true},
};
const size_t pconfig_count = sizeof(pconfig_table) / sizeof(pconfig_table[0]);

/* The deepest reason OpenSSL gives (the first queued one can be a
 * follow-on such as "no certificate assigned"). */
static const char *tls_reason(void)
{
    const char *r = ERR_reason_error_string(ERR_peek_last_error());
    ERR_clear_error();
    return r ? r : "file missing, unreadable or not PEM";
}

SSL_CTX *pconfig_tls_context(const char *cert, const char *key, char *err, size_t n)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, n, "cannot create the TLS context: %.150s", tls_reason());
        return NULL;
    }
    /* modern protocol versions only */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        util_snprintf(err, n, "PROXY_TLS_CERT=\"%.*s\": cannot load the PEM certificate chain: %.80s", UTF8_CUT(cert, 100),
                      tls_reason());
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        util_snprintf(err, n, "PROXY_TLS_KEY=\"%.*s\": cannot load a PEM key matching the certificate: %.80s",
                      UTF8_CUT(key, 100), tls_reason());
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}


static bool span_has(const char *s, size_t n, const char *chars)
{
    for (size_t i = 0; i < n; i++)
        if (strchr(chars, s[i])) return true;
    return false;
}

/* ALLOWED_HOSTS: names as in a Host header, without the port (xsite.h). */
static int check_hosts(const char *list, char *errs, size_t errs_size)
{
    const char *cur = list ? list : "", *it;
    size_t il;
    int n = 0;
    while (util_list_item(&cur, &it, &il)) {
        const char *why = NULL;
        bool v6 = il >= 2 && it[0] == '[' && it[il - 1] == ']';
        if (il == 1 && it[0] == '*')
            why = "* is not a host name: leave ALLOWED_HOSTS empty to answer any Host, or list the names";
        else if (memchr(it, '/', il) || memchr(it, '@', il))
            why = "must be a host name (example.com, .example.com, 127.0.0.1, [::1]), not a URL";
        else if (!v6 && memchr(it, ':', il))
            why = "must be a host name without a port (the port is not compared); an IPv6 address goes in brackets";
        for (size_t i = 0; !why && i < il; i++) {
            char c = it[i];
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '-' || c == '_' || (v6 && (c == ':' || c == '[' || c == ']' || c == '%'));
            if (!ok) why = "holds a character no host name has (letters, digits, '.', '-', '_'; [v6] addresses)";
        }
        if (why) {
            n++;
            cfg_append_error(errs, errs_size, "ALLOWED_HOSTS: \"%.*s\" %s\n", UTF8_CUT(it, il > 200 ? 200 : il), why);
        }
    }
    return n;
}

/* ALLOWED_ORIGINS: origins as browsers send them in the Origin header. */
static int check_origins(const char *list, char *errs, size_t errs_size)
{
    const char *cur = list ? list : "", *it;
    size_t il;
    int n = 0;
    while (util_list_item(&cur, &it, &il)) {
        const char *why = NULL;
        size_t skip = il > 8 && strncasecmp(it, "https://", 8) == 0 ? 8 : il > 7 && strncasecmp(it, "http://", 7) == 0 ? 7 : 0;
        if (memchr(it, '*', il))
            why = "a wildcard would let any web page send writes (submissions, cancels, admin calls) through a "
                  "visitor's browser; list each origin exactly, e.g. https://app.example.com";
        else if (il == 4 && strncasecmp(it, "null", 4) == 0)
            why = "null is the origin of sandboxed frames and local files, which any page can make; it cannot be allowed";
        else if (!skip)
            why = "must be an origin as browsers send it: http:// or https://, the host and an optional :port";
        else if (span_has(it + skip, il - skip, "/?#@ "))
            why = "must be an origin only (scheme://host[:port]): no path, not even a final /, no query";
        else if (il == skip)
            why = "has no host";
        if (why) {
            n++;
            cfg_append_error(errs, errs_size, "ALLOWED_ORIGINS: \"%.*s\" %s\n", UTF8_CUT(it, il > 200 ? 200 : il), why);
        }
    }
    return n;
}

/* AUTH_RESPONSE_HEADERS are header names, at most 16, none the proxy
 * frames itself; AUTH_STICKY_HEADER is one of them. */
static int check_auth(const proxy_settings *s, char *errs, size_t errs_size)
{
    int n = 0, count = 0;
    bool sticky_found = false;
    const char *cur = s->auth_response_headers, *c;
    size_t l;
    while (util_list_item(&cur, &c, &l)) {
        count++;
        bool token = true;
        for (size_t i = 0; i < l; i++)
            token = token && ((c[i] >= 'a' && c[i] <= 'z') || (c[i] >= 'A' && c[i] <= 'Z') ||
                              (c[i] >= '0' && c[i] <= '9') || c[i] == '-' || c[i] == '_');
        static const char *const own[] = {"host", "content-length", "transfer-encoding", "connection", "cookie",
                                          "authorization"};
        bool reserved = false;
        for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++)
            reserved = reserved || (strlen(own[i]) == l && strncasecmp(c, own[i], l) == 0);
        if (!token || reserved) {
            n++;
            char line[300];
            util_snprintf(line, sizeof(line),
                          "AUTH_RESPONSE_HEADERS: \"%.*s\" %s\n", UTF8_CUT(c, l < 100 ? l : 100),
                          reserved ? "is a header the proxy or the client owns; name one like X-User-Id"
                                   : "is not a header name (letters, digits, - and _)");
            cfg_append_error(errs, errs_size, "%s", line);
        }
        if (s->auth_sticky_header[0] && strlen(s->auth_sticky_header) == l &&
            strncasecmp(c, s->auth_sticky_header, l) == 0)
            sticky_found = true;
    }
    if (count > 16) {
        n++;
        cfg_append_error(errs, errs_size, "AUTH_RESPONSE_HEADERS: at most 16 names\n");
    }
    if (s->auth_sticky_header[0] && !sticky_found) {
        n++;
        cfg_append_error(errs, errs_size,
                         "AUTH_STICKY_HEADER: must be one of AUTH_RESPONSE_HEADERS (add it there)\n");
    }
    if (!s->auth_url[0] && (s->auth_response_headers[0] || s->auth_sticky_header[0] || s->auth_cache_ttl_s > 0)) {
        n++;
        cfg_append_error(errs, errs_size,
                         "AUTH_RESPONSE_HEADERS, AUTH_STICKY_HEADER, AUTH_CACHE_TTL_S: set AUTH_URL too, or "
                         "none of them\n");
    }
    return n;
}

int pconfig_load(proxy_settings *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
{
    proxy_settings tmp = {0};
    int n = cfg_parse(pconfig_table, pconfig_count, &tmp, lookup, ud, errs, errs_size);

    /* Cross-field checks, reported in the same style. */
    if ((tmp.tls_cert[0] != '\0') != (tmp.tls_key[0] != '\0')) {
        n++;
        cfg_append_error(errs, errs_size, "PROXY_TLS_CERT and PROXY_TLS_KEY: set both for HTTPS, or neither\n");
    } else if (tmp.tls_cert[0]) {
        /* the files too, so --check-config finds what start-up would */
        char terr[256];
        SSL_CTX *ctx = pconfig_tls_context(tmp.tls_cert, tmp.tls_key, terr, sizeof(terr));
        if (!ctx) {
            n++;
            cfg_append_error(errs, errs_size, "%s\n", terr);
        }
        SSL_CTX_free(ctx);
    }
    const char *const names[3] = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "LEGACY_RQ_URL"};
    const char *const urls[3] = {tmp.broker_url, tmp.result_backend, tmp.legacy_rq_url};
    n += rclient_check_urls(names, urls, 3, errs, errs_size);
    if (strcmp(tmp.legacy_backend, "rq") == 0) {
        if (!tmp.legacy_rq_url[0]) {
            n++;
            cfg_append_error(errs, errs_size,
                             "LEGACY_RQ_URL is empty: LEGACY_BACKEND=rq needs the Redis RQ uses, e.g. "
                             "redis://127.0.0.1:6379/2\n");
        }
        int nq = 0;
        for (const char *c = tmp.legacy_rq_queues; *c; c++) nq += *c == ',';
        if (!tmp.legacy_rq_queues[0] || nq != 2) {
            n++;
            cfg_append_error(errs, errs_size,
                             "LEGACY_RQ_QUEUES: must name three RQ queues, for priorities 0-2, 3-5 and 6-9, e.g. "
                             "high,default,low\n");
        }
    }
    tmp.trust_forwarded = 0;
    const char *tcur = tmp.trust_forwarded_text, *titem;
    size_t tlen;
    while (util_list_item(&tcur, &titem, &tlen)) {
        static const char *const fwd_names[] = {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"};
        unsigned bit = 0;
        if (tlen == 3 && strncasecmp(titem, "all", 3) == 0) bit = FWD_ALL;
        for (unsigned i = 0; i < 4 && !bit; i++)
            if (strlen(fwd_names[i]) == tlen && strncasecmp(titem, fwd_names[i], tlen) == 0) bit = 1u << i;
        if (!bit) {
            n++;
            char line[400];
            util_snprintf(line, sizeof(line),
                          "TRUST_FORWARDED_HEADERS: \"%.*s\" is not one of x-forwarded-for, x-forwarded-host, "
                          "x-forwarded-proto, forwarded, all\n", UTF8_CUT(titem, tlen < 100 ? tlen : 100));
            cfg_append_error(errs, errs_size, "%s", line);
        }
        tmp.trust_forwarded |= bit;
    }
    n += check_hosts(tmp.allowed_hosts, errs, errs_size);
    n += check_origins(tmp.allowed_origins, errs, errs_size);
    n += check_auth(&tmp, errs, errs_size);
    if (tmp.allowed_languages[0] == '\0') {
        n++;
        cfg_append_error(errs, errs_size, "ALLOWED_LANGUAGES=\"\": must name at least one language, e.g. python\n");
    }
    tmp.rollout_nsteps = 0;
    if (tmp.rollout_steps_text && tmp.rollout_steps_text[0]) {
        const char *c = tmp.rollout_steps_text;
        double prev = 0;
        bool ok = true;
        while (ok && *c) {
            char *end = NULL;
            double f = strtod(c, &end);
            ok = end != c && f > prev && f <= 1 && tmp.rollout_nsteps < ROLLOUT_MAX_STEPS && (*end == ',' || !*end);
            if (ok) {
                tmp.rollout_steps[tmp.rollout_nsteps++] = prev = f;
                c = *end ? end + 1 : end;
            }
        }
        if (!ok) {
            n++;
            char line[600];
            util_snprintf(line, sizeof(line),
                          "ROLLOUT_STEPS=\"%.*s\": must be up to %d rising fractions in (0, 1] separated by commas, e.g. 0.1,0.25,0.5,0.9,1.0\n",
                          UTF8_CUT(tmp.rollout_steps_text, 400), ROLLOUT_MAX_STEPS);
            cfg_append_error(errs, errs_size, "%s", line); /* the value is the user's: never a format */
        }
    }
    static const char *const gate_setting[GATE_COUNT] = {"SYSTEM_ERROR", "PROGRAM_FAILURE", "LATENCY"};
    for (int g = 0; g < GATE_COUNT; g++) {
        if (tmp.gate_pass_margin[g] >= tmp.gate_margin[g]) continue;
        n++;
        cfg_append_error(errs, errs_size,
                         "GATE_%s_PASS_MARGIN=%g: must be at least GATE_%s_MARGIN=%g (a step passes when the new path "
                         "is surely below the pass margin, and rolls back when it is surely above the margin)\n",
                         gate_setting[g], tmp.gate_pass_margin[g], gate_setting[g], tmp.gate_margin[g]);
    }
    if (n) {
        cfg_free(pconfig_table, pconfig_count, &tmp);
        return n;
    }
    pconfig_free(s);
    *s = tmp;
    return 0;
}

static int load_any(void *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
{
    return pconfig_load(s, lookup, ud, errs, errs_size);
}

int pconfig_read(proxy_settings *s, const char *env_file, char *errs, size_t errs_size)
{
    return cfg_load_with_env_file(env_file, load_any, s, errs, errs_size);
}

void pconfig_free(proxy_settings *s)
{
    cfg_free(pconfig_table, pconfig_count, s);
}

bool pconfig_language_allowed(const proxy_settings *s, const char *lang, size_t len)
{
    const char *cur = s->allowed_languages, *it;
    size_t il;
    while (util_list_item(&cur, &it, &il))
        if (il == len && len && memcmp(it, lang, len) == 0) return true;
    return false;
}
