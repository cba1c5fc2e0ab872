/* turnout-executor — the reference executor of DESIGN §8: an evhttp server
 * that runs each POST /execute in a sandboxed child (executor_run) and
 * answers when the run ends, with a bounded number of slots.
 *
 * POST /execute {eval_id, code, language, timeout} · POST /kill/{eval_id} ·
 * GET /capacity · GET /health.  It exists so the whole system runs on one
 * machine; real deployments point EXECUTOR_SERVICE_URL at their own. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "cfg.h"
#include "daemon.h"
#include "executor_run.h"
#include "jsonw.h"
#include "log.h"
#include "util.h"

#define PROGRAM "turnout-executor"
#define MAX_BODY_BYTES (2u * 1024 * 1024)
#define EVHTTP_BODY_CEILING (4u * 1024 * 1024) /* above it evhttp sends its own HTML 413 */
#define MAX_EVAL_ID 128
#define MIN_TIMEOUT_S 1
#define MAX_TIMEOUT_S 900
#define DEFAULT_TIMEOUT_S 30
/* A connection waits for its reply as long as the longest run may take. */
#define HTTP_TIMEOUT_S (MAX_TIMEOUT_S + 60)
#define BUSY_RETRY_S 1
#define DRAIN_S 0.2          /* replies already queued get this long to flush */
#define STOP_DEADLINE_S 5.0  /* SIGTERM: exit even if a run would not end */
#define SUPPORTED_LANGUAGES "python"

/* ---------- configuration ---------- */

typedef struct settings {
    char *listen;
    long long max_concurrent;
    char *executor_id;
    long long memory_mb;
    long long file_mb;
    long long max_procs;
    long long output_limit;
    char *log_level;
    char *log_format;
} settings;

static const cfg_option options[] = {
    {"EXECUTOR_LISTEN", CFG_ADDR, "127.0.0.1:8083", 0, 0, NULL, offsetof(settings, listen),
     "address:port to serve the executor protocol on (loopback by default)", false},
    {"EXECUTOR_MAX_CONCURRENT", CFG_INT, "2", 1, 256, NULL, offsetof(settings, max_concurrent),
     "evaluations running at once; beyond it POST /execute answers 503 with Retry-After", false},
    {"EXECUTOR_ID", CFG_STRING, "", 0, 200, NULL, offsetof(settings, executor_id),
     "name reported as executor_id; empty: executor@<hostname>:<port>", false},
    {"EXECUTOR_MEMORY_MB", CFG_INT, "512", 32, 1048576, NULL, offsetof(settings, memory_mb),
     "address-space limit of one run (RLIMIT_AS), MiB", true},
    {"EXECUTOR_FILE_MB", CFG_INT, "16", 0, 1048576, NULL, offsetof(settings, file_mb),
     "largest file one run may write (RLIMIT_FSIZE), MiB", true},
    {"EXECUTOR_MAX_PROCS", CFG_INT, "64", 1, 1000000, NULL, offsetof(settings, max_procs),
     "processes per uid while a run forks (RLIMIT_NPROC; not enforced for root)", true},
    {"EXECUTOR_OUTPUT_LIMIT", CFG_INT, "1048576", 1, 268435456, NULL, offsetof(settings, output_limit),
     "bytes of stdout and of stderr kept per run; the rest is dropped and marked [output truncated]", true},
    {"LOG_LEVEL", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", offsetof(settings, log_level),
     "lowest level logged", true},
    {"LOG_FORMAT", CFG_ENUM, "logfmt", 0, 0, "logfmt|json", offsetof(settings, log_format),
     "log line format", true},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static int settings_load(void *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t size)
{
    return cfg_load(options, NOPTIONS, s, sizeof(settings), lookup, ud, errs, size);
}

/* The environment, or TURNOUT_ENV_FILE over it when that is set. */
static int settings_read(settings *s, char *errs, size_t size)
{
    return cfg_load_with_env_file(getenv("TURNOUT_ENV_FILE"), settings_load, s, errs, size);
}

/* ---------- state ---------- */

typedef struct exec_server exec_server;

/* One slot per allowed concurrent run; busy while the run is alive. */
typedef struct slot {
    exec_server *ex;
    bool busy;
    char eval_id[MAX_EVAL_ID + 1];
    struct evhttp_request *req;      /* NULL once the client is gone */
    struct evhttp_connection *evcon; /* to match the close callback */
    struct event *hangup;            /* EOF watch on the client's socket */
    exec_run *run;
} slot;

struct exec_server {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    settings cfg;
    char *id;                        /* executor_id */
    exec_ctx *runs;
    slot *slots;
    size_t nslots, running;
    struct event *stop_timer;
    bool stopping;
};

/* ---------- replies ---------- */

/* Sends `o` (stolen) as JSON; 503 when it could not be built. */
static void reply_obj(struct evhttp_request *req, int status, json_t *o)
{
    /* the only reals are durations, rounded to the microsecond: 15
     * significant digits write them back exactly (0.011113, not
     * 0.011113000000023021) */
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15)) : NULL;
    if (text) util_reply_json(req, status, text, strlen(text));
    else util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
    free(text);
    json_decref(o);
}

static void reply_field(struct evhttp_request *req, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 422 naming the field, both in the message and as "field".  The message
 * is cut at a character boundary and written with jsonw, so input quoted
 * in it can never turn the reply into an out_of_memory one. */
static void reply_field(struct evhttp_request *req, const char *field, const char *fmt, ...)
{
    char msg[512], stack[1024];
    int n = snprintf(msg, sizeof(msg), "%s: ", field);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (m >= 0 && (size_t)(n + m) >= sizeof(msg)) msg[util_utf8_trim_end(msg, sizeof(msg) - 1)] = '\0';
    LOG_INFO("request refused", "status", "422", "field", field, "reason", msg);
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "error");
    jw_lit_string(&w, "invalid_field");
    jw_lit_key(&w, "message");
    jw_cstring(&w, msg);
    jw_lit_key(&w, "field");
    jw_cstring(&w, field);
    jw_obj_close(&w);
    if (jw_failed(&w)) util_reply_error(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1);
    else util_reply_json(req, 422, jw_text(&w), jw_len(&w));
    jw_free(&w);
}

/* util_reply_error plus the log line every refusal gets. */
static void refuse(struct evhttp_request *req, int status, const char *code, const char *msg, int retry_after_s,
                   const char *eval_id)
{
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    LOG_INFO("request refused", "status", st, "error", code, "eval_id", eval_id, "reason", msg);
    util_reply_error(req, status, code, msg, retry_after_s);
}

/* Replaces each invalid UTF-8 sequence with U+FFFD: program output is bytes,
 * JSON strings are Unicode.  New string (caller frees), NULL on OOM. */
static char *utf8_repair(const char *s, size_t n, size_t *outlen)
{
    char *out = malloc(n * 3 + 1);
    size_t o = 0, i = 0;
    if (!out) return NULL;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (ok && len > 1) { /* no overlongs, surrogates or > U+10FFFF */
            unsigned char d = (unsigned char)s[i + 1];
            ok = !(len == 2 && c < 0xc2) && !(len == 3 && c == 0xe0 && d < 0xa0) &&
                 !(len == 3 && c == 0xed && d >= 0xa0) && !(len == 4 && c == 0xf0 && d < 0x90) &&
                 !(len == 4 && (c > 0xf4 || (c == 0xf4 && d >= 0x90)));
        }
        if (ok) {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* A JSON string of program output, repaired when it is not UTF-8. */
static json_t *text_json(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j) return j;
    size_t len;
    char *fixed = utf8_repair(s, n, &len);
    if (!fixed) return NULL;
    j = json_stringn(fixed, len);
    free(fixed);
    return j;
}

static const char *signal_note(int sig)
{
    switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGXCPU: return "SIGXCPU: CPU time limit reached";
    case SIGXFSZ: return "SIGXFSZ: file size limit (EXECUTOR_FILE_MB) reached";
    case SIGSEGV: return "SIGSEGV: invalid memory access";
    case SIGABRT: return "SIGABRT: aborted";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGTERM: return "SIGTERM";
    default: return "signal";
    }
}

/* The "error" text: stderr, then why it ended when that is not plain exit
 * code 0/1 with a traceback (signals, timeout, kill).  New string (caller
 * frees), NULL on OOM.  Built with memcpy: stderr may hold NUL bytes. */
static char *error_text(const exec_result *res, size_t *len)
{
    char why[256] = "";
    switch (res->outcome) {
    case EXEC_COMPLETED: break;
    case EXEC_FAILED:
        if (res->term_signal)
            snprintf(why, sizeof(why), "[ended by signal %d (%s)]", res->term_signal, signal_note(res->term_signal));
        else if (res->err_len == 0)
            snprintf(why, sizeof(why), "[exited with code %d]", res->exit_code);
        break;
    case EXEC_TIMEOUT:
        snprintf(why, sizeof(why), "[timed out: still running after %g s; its process group was killed]",
                 res->timeout_s);
        break;
    case EXEC_KILLED:
        snprintf(why, sizeof(why), "[killed: %s]", res->kill_reason ? res->kill_reason : "on request");
        break;
    }
    size_t wlen = strlen(why);
    bool sep = wlen && res->err_len && res->err[res->err_len - 1] != '\n';
    char *text = malloc(res->err_len + sep + wlen + 1);
    if (!text) return NULL;
    memcpy(text, res->err, res->err_len);
    if (sep) text[res->err_len] = '\n';
    memcpy(text + res->err_len + sep, why, wlen + 1);
    *len = res->err_len + sep + wlen;
    return text;
}

/* ---------- runs ---------- */

static slot *find_running(exec_server *ex, const char *eval_id)
{
    for (size_t i = 0; i < ex->nslots; i++)
        if (ex->slots[i].busy && strcmp(ex->slots[i].eval_id, eval_id) == 0) return &ex->slots[i];
    return NULL;
}

static void maybe_exit(exec_server *ex)
{
    if (!ex->stopping || ex->running > 0) return;
    struct timeval tv = {0, (suseconds_t)(DRAIN_S * 1e6)};
    event_base_loopexit(ex->base, &tv);
}

static void hangup_stop(slot *s)
{
    if (s->hangup) event_free(s->hangup);
    s->hangup = NULL;
}

/* evhttp stops reading a connection while its request is being answered,
 * so it would not notice the client leaving before the run ends; this
 * watch does, without consuming anything evhttp may want to read later. */
static void on_hangup(evutil_socket_t fd, short what, void *arg)
{
    slot *s = arg;
    char c;
    (void)what;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    hangup_stop(s);
    if (n > 0) return; /* a pipelined request: the client is still there */
    LOG_INFO("client went away; killing its run", "eval_id", s->eval_id);
    exec_run_kill(s->run, "the client closed the connection");
}

static void hangup_watch(exec_server *ex, slot *s)
{
    struct bufferevent *bev = s->evcon ? evhttp_connection_get_bufferevent(s->evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0) return;
    s->hangup = event_new(ex->base, fd, EV_READ | EV_PERSIST, on_hangup, s);
    if (!s->hangup || event_add(s->hangup, NULL) != 0) {
        /* Only an early kill is lost: the run still ends by its timeout. */
        LOG_WARN("cannot watch the client connection", "eval_id", s->eval_id);
        hangup_stop(s);
    }
}

static void on_run_done(const exec_result *res, void *ud)
{
    slot *s = ud;
    exec_server *ex = s->ex;
    struct evhttp_request *req = s->req;
    size_t elen = 0;
    char *etext = error_text(res, &elen);
    json_t *error = res->outcome == EXEC_COMPLETED && elen == 0 ? json_null() : etext ? text_json(etext, elen) : NULL;
    json_t *exit_code = res->exited ? json_integer(res->exit_code)
                        : res->term_signal ? json_integer(-res->term_signal) /* subprocess's convention */
                                           : json_null();
    json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:f}", "eval_id", s->eval_id, "status",
                          exec_outcome_name(res->outcome), "output", text_json(res->out, res->out_len), "error",
                          error, "exit_code", exit_code, "executor_id", ex->id, "duration_s",
                          round(res->duration_s * 1e6) / 1e6);
    char dur[32], code[16];
    snprintf(dur, sizeof(dur), "%.3f", res->duration_s);
    snprintf(code, sizeof(code), "%d", res->exited ? res->exit_code : -res->term_signal);
    LOG_INFO("run finished", "eval_id", s->eval_id, "status", exec_outcome_name(res->outcome), "exit_code", code,
             "duration_s", dur, "client", req ? NULL : "gone");

    /* Free the slot before replying: the reply may close the connection,
     * and its close callback must not find this run any more. */
    hangup_stop(s);
    s->busy = false;
    s->req = NULL;
    s->evcon = NULL;
    s->run = NULL;
    ex->running--;
    if (req) reply_obj(req, 200, o);
    else json_decref(o);
    free(etext);
    maybe_exit(ex);
}

/* The client of a pending /execute went away: nobody wants the result. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    exec_server *ex = arg;
    for (size_t i = 0; i < ex->nslots; i++) {
        slot *s = &ex->slots[i];
        if (!s->busy || s->evcon != evcon) continue;
        /* Still attached, libevent frees the request with the connection;
         * detached, it is ours and replying to it just frees it. */
        if (s->req && evhttp_request_get_connection(s->req) == evcon) s->req = NULL;
        s->evcon = NULL;
        hangup_stop(s);
        LOG_INFO("client went away; killing its run", "eval_id", s->eval_id);
        exec_run_kill(s->run, "the client closed the connection");
    }
}

/* ---------- handlers ---------- */

static bool valid_eval_id(const char *s, size_t n)
{
    if (n == 0 || n > MAX_EVAL_ID || strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* Reads the body as a JSON object.  On failure the reply is sent and NULL
 * returned. */
static json_t *read_json_object(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char msg[400];
    if (len > MAX_BODY_BYTES) {
        snprintf(msg, sizeof(msg), "the body is %zu bytes; at most %u are accepted", len, MAX_BODY_BYTES);
        refuse(req, 413, "body_too_large", msg, 0, NULL);
        return NULL;
    }
    const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
    if (len && !data) {
        refuse(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1, NULL);
        return NULL;
    }
    json_error_t jerr;
    json_t *doc = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        snprintf(msg, sizeof(msg), "the body is not valid JSON (%s at line %d, column %d); send a JSON object",
                 jerr.text, jerr.line, jerr.column);
        refuse(req, 400, "bad_json", msg, 0, NULL);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        refuse(req, 400, "bad_json",
               "the body must be a JSON object, e.g. {\"eval_id\": \"e1\", \"code\": \"print(1)\", \"language\": "
               "\"python\", \"timeout\": 30}",
               0, NULL);
        return NULL;
    }
    return doc;
}

static void handle_execute(exec_server *ex, struct evhttp_request *req)
{
    char msg[400], err[256];
    json_t *doc = read_json_object(req);
    if (!doc) return;

    json_t *id = json_object_get(doc, "eval_id");
    json_t *code = json_object_get(doc, "code");
    json_t *lang = json_object_get(doc, "language");
    json_t *timeout = json_object_get(doc, "timeout");
    const char *eval_id = json_string_value(id);
    double timeout_s = DEFAULT_TIMEOUT_S;

    if (!eval_id || !valid_eval_id(eval_id, json_string_length(id))) {
        reply_field(req, "eval_id", "%s; it must be 1 to %d characters of A-Z a-z 0-9 _ . : -",
                    id ? "is not valid" : "is required", MAX_EVAL_ID);
        goto done;
    }
    if (!json_is_string(code) || json_string_length(code) == 0) {
        reply_field(req, "code", "%s; send the program text as a non-empty string",
                    code ? "must be a non-empty string" : "is required");
        goto done;
    }
    if (lang && !json_is_null(lang) &&
        (!json_is_string(lang) || strcmp(json_string_value(lang), "python") != 0)) {
        reply_field(req, "language", "\"%.*s\" is not supported; supported: " SUPPORTED_LANGUAGES,
                    UTF8_CUT(json_is_string(lang) ? json_string_value(lang) : "(not a string)", 64));
        goto done;
    }
    if (timeout && !json_is_null(timeout)) {
        double tv = json_number_value(timeout);
        if (!json_is_number(timeout) || !(tv >= MIN_TIMEOUT_S && tv <= MAX_TIMEOUT_S)) {
            reply_field(req, "timeout", "must be a number of seconds from %d to %d (default %d)", MIN_TIMEOUT_S,
                        MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S);
            goto done;
        }
        timeout_s = tv;
    }
    if (ex->stopping) {
        refuse(req, 503, "shutting_down", "the executor is shutting down; send it to another executor", BUSY_RETRY_S,
               eval_id);
        goto done;
    }
    if (find_running(ex, eval_id)) {
        snprintf(msg, sizeof(msg), "eval_id \"%s\" is already running here; wait for its result or POST /kill/%s",
                 eval_id, eval_id);
        refuse(req, 409, "already_running", msg, 0, eval_id);
        goto done;
    }
    slot *s = NULL;
    for (size_t i = 0; i < ex->nslots && !s; i++)
        if (!ex->slots[i].busy) s = &ex->slots[i];
    if (!s) {
        snprintf(msg, sizeof(msg), "all %zu slots are busy (EXECUTOR_MAX_CONCURRENT); retry shortly", ex->nslots);
        refuse(req, 503, "at_capacity", msg, BUSY_RETRY_S, eval_id);
        goto done;
    }
    exec_spec spec = {
        .eval_id = eval_id,
        .code = json_string_value(code),
        .code_len = json_string_length(code),
        .timeout_s = timeout_s,
    };
    bool busy;
    exec_run *run = exec_run_start(ex->runs, &spec, on_run_done, s, err, &busy);
    if (!run) {
        LOG_ERROR("cannot start a run", "eval_id", eval_id, "error", err);
        snprintf(msg, sizeof(msg), "cannot start the run: %s", err);
        refuse(req, busy ? 503 : 500, busy ? "no_resources" : "spawn_failed", msg, busy ? BUSY_RETRY_S : 0, eval_id);
        goto done;
    }
    s->busy = true;
    snprintf(s->eval_id, sizeof(s->eval_id), "%s", eval_id);
    s->req = req;
    s->evcon = evhttp_request_get_connection(req);
    s->run = run;
    ex->running++;
    if (s->evcon) evhttp_connection_set_closecb(s->evcon, on_conn_close, ex);
    hangup_watch(ex, s);
    char t[32];
    snprintf(t, sizeof(t), "%g", timeout_s);
    LOG_DEBUG("run started", "eval_id", eval_id, "timeout_s", t);
done:
    json_decref(doc);
}

static void handle_kill(exec_server *ex, struct evhttp_request *req, const char *rest)
{
    char msg[400];
    size_t n = 0;
    char *id = evhttp_uridecode(rest, 0, &n);
    if (!id) {
        refuse(req, 503, "out_of_memory", "the server is short of memory; retry shortly", 1, NULL);
        return;
    }
    slot *s = valid_eval_id(id, n) ? find_running(ex, id) : NULL;
    if (!s) {
        snprintf(msg, sizeof(msg), "no run \"%.*s\" is running here (never started, or already finished)",
                 UTF8_CUT(id, 130));
        refuse(req, 404, "not_running", msg, 0, valid_eval_id(id, n) ? id : NULL);
        goto done;
    }
    LOG_INFO("kill requested", "eval_id", id);
    exec_run_kill(s->run, "stopped by POST /kill");
    reply_obj(req, 200, json_pack("{s:s, s:b}", "eval_id", s->eval_id, "killed", 1));
done:
    free(id);
}

static void handle_capacity(exec_server *ex, struct evhttp_request *req)
{
    size_t avail = ex->stopping ? 0 : ex->nslots - ex->running;
    reply_obj(req, 200, json_pack("{s:s, s:b, s:I, s:I, s:I, s:I}", "executor_id", ex->id, "can_accept", avail > 0,
                                  "running", (json_int_t)ex->running, "max_concurrent", (json_int_t)ex->nslots,
                                  "available_slots", (json_int_t)avail, "max_body_bytes",
                                  (json_int_t)MAX_BODY_BYTES));
}

static void handle_health(exec_server *ex, struct evhttp_request *req)
{
    reply_obj(req, 200, json_pack("{s:s, s:s, s:I}", "status", ex->stopping ? "stopping" : "ok", "executor_id",
                                  ex->id, "running", (json_int_t)ex->running));
}

static void reply_method(struct evhttp_request *req, const char *allow, const char *path)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "%s accepts %s only", path, allow);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    refuse(req, 405, "method_not_allowed", msg, 0, NULL);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    exec_server *ex = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char buf[512];

    if (!path || !*path) path = "/";
    size_t n = strlen(path);
    if (n > 1 && path[n - 1] == '/' && n < sizeof(buf)) { /* "/health/" as "/health" */
        memcpy(buf, path, n - 1);
        buf[n - 1] = '\0';
        path = buf;
    }
    bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;
    if (strcmp(path, "/execute") == 0) {
        if (cmd != EVHTTP_REQ_POST) reply_method(req, "POST", path);
        else handle_execute(ex, req);
    } else if (strncmp(path, "/kill/", 6) == 0 && path[6]) {
        if (cmd != EVHTTP_REQ_POST) reply_method(req, "POST", "/kill/{eval_id}");
        else handle_kill(ex, req, path + 6);
    } else if (strcmp(path, "/capacity") == 0) {
        if (!get) reply_method(req, "GET", path);
        else handle_capacity(ex, req);
    } else if (strcmp(path, "/health") == 0) {
        if (!get) reply_method(req, "GET", path);
        else handle_health(ex, req);
    } else {
        refuse(req, 404, "not_found",
               "unknown path; see POST /execute, POST /kill/{eval_id}, GET /capacity, GET /health", 0, NULL);
    }
}

/* ---------- signals ---------- */

static void on_stop_deadline(evutil_socket_t fd, short what, void *arg)
{
    exec_server *ex = arg;
    (void)fd;
    (void)what;
    LOG_WARN("runs did not end in time after SIGTERM; exiting anyway");
    event_base_loopbreak(ex->base);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    exec_server *ex = arg;
    (void)what;
    if (ex->stopping) return;
    ex->stopping = true;
    char n[24];
    snprintf(n, sizeof(n), "%zu", ex->running);
    LOG_INFO("shutting down; killing running evaluations", "signal", sig == SIGTERM ? "TERM" : "INT", "running", n);
    if (ex->listener) evhttp_del_accept_socket(ex->http, ex->listener);
    ex->listener = NULL;
    /* Their replies say "killed", sent as each child is reaped. */
    for (size_t i = 0; i < ex->nslots; i++)
        if (ex->slots[i].busy) exec_run_kill(ex->slots[i].run, "the executor is shutting down");
    struct timeval tv = {(time_t)STOP_DEADLINE_S, 0};
    if (event_add(ex->stop_timer, &tv) != 0) LOG_ERROR("cannot arm the stop deadline");
    maybe_exit(ex);
}

static exec_limits limits_of(const settings *cfg)
{
    exec_limits l = {
        .memory_mb = cfg->memory_mb,
        .file_mb = cfg->file_mb,
        .max_procs = cfg->max_procs,
        .output_limit = (size_t)cfg->output_limit,
    };
    return l;
}

/* Re-reads the settings; limits and logging apply to runs started from now
 * on.  Slots and the listener stay: they cannot change without a restart. */
static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    exec_server *ex = arg;
    settings fresh = {0};
    char errs[4096] = "";
    (void)sig;
    (void)what;
    if (settings_read(&fresh, errs, sizeof(errs)) != 0) {
        size_t n = strlen(errs);
        if (n && errs[n - 1] == '\n') errs[n - 1] = '\0';
        LOG_ERROR("reload refused; keeping the current settings", "problems", errs);
        cfg_free(options, NOPTIONS, &fresh);
        return;
    }
    /* the options marked live change now; the listener, the slots and the id stay */
    char restart[256] = "";
    cfg_reload_take(options, NOPTIONS, &ex->cfg, &fresh, restart, sizeof(restart));
    cfg_free(options, NOPTIONS, &fresh);
    if (restart[0]) LOG_WARN("reload: these settings change only on restart; kept as they run", "settings", restart);
    exec_limits limits = limits_of(&ex->cfg);
    exec_ctx_set_limits(ex->runs, &limits);
    if (log_setup(ex->cfg.log_level, ex->cfg.log_format, PROGRAM) != 0) LOG_WARN("bad log settings ignored");
    LOG_INFO("settings reloaded");
}

/* ---------- main ---------- */


static int make_id(exec_server *ex, int port)
{
    if (ex->cfg.executor_id && *ex->cfg.executor_id) {
        ex->id = strdup(ex->cfg.executor_id);
        return ex->id ? 0 : -1;
    }
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    if (asprintf(&ex->id, "executor@%s:%d", host, port) < 0) {
        ex->id = NULL;
        return -1;
    }
    return 0;
}

static int start(void *self, struct event_base *base, char err[256])
{
    exec_server *ex = self;
    char host[256];
    int port;

    if (cfg_split_addr(ex->cfg.listen, host, sizeof(host), &port) != 0) {
        snprintf(err, 256, "EXECUTOR_LISTEN=\"%s\" is not host:port", ex->cfg.listen);
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    struct stat st;
    if (stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode) || access(tmp, W_OK | X_OK) != 0) {
        snprintf(err, 256, "TMPDIR=\"%s\" must be a writable directory (each run gets its own dir in it)", tmp);
        return 1;
    }
    exec_limits limits = limits_of(&ex->cfg);
    ex->nslots = (size_t)ex->cfg.max_concurrent;
    ex->slots = calloc(ex->nslots, sizeof(*ex->slots));
    if (!ex->slots || make_id(ex, port) != 0) {
        snprintf(err, 256, "cannot start: out of memory");
        return 1;
    }
    for (size_t i = 0; i < ex->nslots; i++) ex->slots[i].ex = ex;
    ex->base = base;
    char why[256];
    ex->runs = exec_ctx_new(ex->base, &limits, tmp, why);
    if (!ex->runs) {
        snprintf(err, 256, "cannot start: %.200s", why);
        return 1;
    }
    ex->http = evhttp_new(ex->base);
    ex->stop_timer = ex->http ? evtimer_new(ex->base, on_stop_deadline, ex) : NULL;
    if (!ex->stop_timer) {
        snprintf(err, 256, "cannot start: out of memory");
        return 1;
    }
    evhttp_set_max_body_size(ex->http, EVHTTP_BODY_CEILING);
    evhttp_set_max_headers_size(ex->http, 64 * 1024);
    evhttp_set_timeout(ex->http, HTTP_TIMEOUT_S);
    evhttp_set_allowed_methods(ex->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(ex->http, on_request, ex);
    ex->listener = evhttp_bind_socket_with_handle(ex->http, host, (ev_uint16_t)port);
    if (!ex->listener) {
        LOG_ERROR("cannot listen", "listen", ex->cfg.listen, "error", strerror(errno));
        return 1;
    }
    if (access("/usr/bin/python3", X_OK) != 0)
        LOG_WARN("/usr/bin/python3 is not executable; every run will fail", "error", strerror(errno));
    char conc[24];
    snprintf(conc, sizeof(conc), "%lld", ex->cfg.max_concurrent);
    LOG_INFO("listening", "listen", ex->cfg.listen, "version", TURNOUT_VERSION, "executor_id", ex->id,
             "max_concurrent", conc, "tmp_root", tmp);
    return 0;
}

static void teardown(void *self)
{
    exec_server *ex = self;
    /* Runs still alive (stop deadline hit) are killed and reaped here; the
     * HTTP server goes first so no reply is attempted into it. */
    if (ex->http) evhttp_free(ex->http);
    exec_ctx_free(ex->runs);
    for (size_t i = 0; ex->slots && i < ex->nslots; i++) hangup_stop(&ex->slots[i]);
    if (ex->stop_timer) event_free(ex->stop_timer);
    free(ex->slots);
    free(ex->id);
    cfg_free(options, NOPTIONS, &ex->cfg);
}

static int read_settings(void *self, char *errs, size_t size)
{
    return settings_read(&((exec_server *)self)->cfg, errs, size);
}

static void log_names(const void *self, const char **level, const char **format)
{
    const exec_server *ex = self;
    *level = ex->cfg.log_level;
    *format = ex->cfg.log_format;
}

int main(int argc, char **argv)
{
    const daemon_prog prog = {
        .name = PROGRAM,
        .summary = "the reference executor of turnout: POST /execute runs code in a sandboxed child process; "
                   "POST /kill/{eval_id}, GET /capacity, GET /health",
        .options = options,
        .noptions = NOPTIONS,
        .read = read_settings,
        .log_names = log_names,
        .start = start,
        .stop = on_stop,
        .reload = on_reload,
        .teardown = teardown,
    };
    exec_server ex = {0};
    return daemon_main(argc, argv, &prog, &ex);
}
