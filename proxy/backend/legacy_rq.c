/* legacy_rq — the legacy queue as RQ 1.13 lays it out in Redis, run by real
 * `rq worker` processes (LEGACY_BACKEND=rq).
 *
 * Submit writes the job as Queue.enqueue does: the hash rq:job:<eval_id>
 * (data = zlib(serializer((function, None, [eval_id, code, language],
 * {timeout, engine, priority}))), origin, status queued, timestamps as
 * %Y-%m-%dT%H:%M:%S.%fZ, timeout, result_ttl, ...), the queue key in
 * rq:queues, the id RPUSHed on rq:queue:<q> — in one script, refused when
 * the job exists (the eval_id is the job id).  RQ has no priority within a
 * queue: priorities 0-2, 3-5 and 6-9 go to the three LEGACY_RQ_QUEUES,
 * which `rq worker high default low` consumes in that order.
 *
 * A task is read from the job hash and the newest entry of its result
 * stream rq:results:<id> (type 1 finished with return_value, 2 failed with
 * exc_string, 3 stopped), and given in the Queue Service protocol's words
 * (backend.h).  The function's return value is the executor's reply
 * ({status, output, error, exit_code, duration_s}): its status is the
 * program's verdict; an RQ failure (an exception, RQ's own job timeout) is
 * outcome "error", a system error of the legacy path.
 *
 * Results come from code the proxy does not control: pickles are read by
 * the restricted decoder (common/pickle.h), which refuses anything that
 * would import or call; JSON by jansson.  Cancel: a queued job leaves its
 * queue, becomes canceled and joins rq:canceled:<q>, as RQ's cancel_job
 * does; a running one, with terminate, gets RQ's stop-job command on
 * rq:pubsub:<worker_name>; anything else is a conflict. */
#include "legacy_rq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "log.h"
#include "rq_job.h"
#include "rclient.h"
#include "util.h"

#define RQ_JOB_GRACE_S 30  /* the job's timeout beyond the eval's: RQ kills a job stuck past it */

struct legacy_rq {
    struct event_base *base;
    rclient *rc;
    char queue[3][128];
    char function[201];
    bool pickle;
    long long result_ttl_s;
    size_t max_result; /* LEGACY_MAX_REPLY_BYTES: the largest result field read */
};

typedef struct rq_call {
    legacy_rq *rq;
    bk_cb cb;
    void *arg;
    char eval_id[160];
    bool submit;
} rq_call;

/* ---------- scripts ---------- */

/* KEYS: job, queue, rq:queues.  ARGV: job id, field, value, ...
 * The queue's length after the push; -1 when the job exists. */
static rclient_script enqueue_script;
static const char enqueue_text[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end\n"
    "redis.call('SADD', KEYS[3], KEYS[2])\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 2))\n"
    "redis.call('RPUSH', KEYS[2], ARGV[1])\n"
    "return redis.call('LLEN', KEYS[2])\n";

/* KEYS: job, results.  ARGV: job id, the largest result read (bytes).
 * {fields (name, value pairs), newest result, position (0-based, false),
 * 1 when the result is over the limit}; false when there is no job.  Only
 * the fields read are fetched: the job's data (the code) never travels
 * back, and a result over the limit stays in Redis. */
static rclient_script lookup_script;
static const char lookup_text[] =
    "local names = {'status', 'origin', 'enqueued_at', 'started_at', 'ended_at'}\n"
    "local v = redis.call('HMGET', KEYS[1], unpack(names))\n"
    "if not v[1] then return false end\n"
    "local h = {}\n"
    "for i = 1, #names do if v[i] then h[#h + 1] = names[i]; h[#h + 1] = v[i] end end\n"
    "local pos = false\n"
    "if v[1] == 'queued' and v[2] then pos = redis.call('LPOS', 'rq:queue:' .. v[2], ARGV[1]) end\n"
    "local r = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)\n"
    "local big = 0\n"
    "if r[1] then\n"
    "  local kv = r[1][2]\n"
    "  for i = 2, #kv, 2 do if #kv[i] > tonumber(ARGV[2]) then big = 1; kv[i] = '' end end\n"
    "end\n"
    "return {h, r, pos, big}\n";

/* KEYS: job.  ARGV: job id, terminate (1|0), now, now as RQ writes times
 * (ended_at is written too, so the end is known).  {0}: no job; {1}:
 * cancelled; {2}: told to stop; {3, status}: running; {4, status}: ended. */
static rclient_script cancel_script;
static const char cancel_text[] =
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "if not st then return {0} end\n"
    "if st == 'queued' or st == 'deferred' or st == 'scheduled' then\n"
    "  local q = redis.call('HGET', KEYS[1], 'origin') or 'default'\n"
    "  redis.call('LREM', 'rq:queue:' .. q, 0, ARGV[1])\n"
    "  redis.call('ZREM', 'rq:deferred:' .. q, ARGV[1])\n"
    "  redis.call('ZREM', 'rq:scheduled:' .. q, ARGV[1])\n"
    "  redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[4])\n"
    "  redis.call('ZADD', 'rq:canceled:' .. q, ARGV[3], ARGV[1])\n"
    "  return {1}\n"
    "end\n"
    "if st == 'started' and ARGV[2] == '1' then\n"
    "  local w = redis.call('HGET', KEYS[1], 'worker_name')\n"
    "  if w and w ~= '' then\n"
    "    redis.call('PUBLISH', 'rq:pubsub:' .. w, cjson.encode({command = 'stop-job', job_id = ARGV[1]}))\n"
    "    return {2}\n"
    "  end\n"
    "end\n"
    "if st == 'started' then return {3, st} end\n"
    "return {4, st}\n";

/* KEYS: the three queues.  {lengths..., jobs started per queue...}. */
static rclient_script counts_script;
static const char counts_text[] =
    "local out = {}\n"
    "for i = 1, #KEYS do out[i] = redis.call('LLEN', 'rq:queue:' .. KEYS[i]) end\n"
    "for i = 1, #KEYS do out[#KEYS + i] = redis.call('ZCARD', 'rq:wip:' .. KEYS[i]) end\n"
    "return out\n";

/* ---------- answers ---------- */

static void deliver(rq_call *c, enum bk_outcome o, const char *detail, json_t *doc, long long position,
                    bool maybe_done)
{
    bk_result r = {o, 0, position, detail, doc, false, maybe_done, NULL};
    c->cb(&r, c->arg);
    free(c);
}

/* The Redis side failed: the same outcomes as the HTTP service away. */
static bool failed_reply(rq_call *c, redisReply *reply, const char *err)
{
    char detail[BK_DETAIL_MAX];
    if (!reply) {
        bool timeout = err && strcmp(err, "timeout") == 0;
        util_snprintf(detail, sizeof(detail), "RQ's Redis (LEGACY_RQ_URL) %s: %s",
                      timeout ? "did not answer in time" : "is unreachable", err ? err : "no reply");
        deliver(c, timeout ? BK_TIMEOUT : BK_UNREACHABLE, detail, NULL, -1, c->submit);
        return true;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        util_snprintf(detail, sizeof(detail), "RQ's Redis refused the command: %.*s", UTF8_CUT(reply->str, 200));
        deliver(c, BK_BAD_STATUS, detail, NULL, -1, false);
        return true;
    }
    return false;
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rq_call *c = arg;
    deliver(c, BK_UNREACHABLE, "RQ's Redis (LEGACY_RQ_URL) is unreachable", NULL, -1, false);
}

static rq_call *new_call(legacy_rq *rq, const char *eval_id, bk_cb cb, void *arg)
{
    rq_call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->rq = rq;
    c->cb = cb;
    c->arg = arg;
    if (eval_id) snprintf(c->eval_id, sizeof(c->eval_id), "%s", eval_id);
    return c;
}

/* Sends the script; when Redis is away the answer is "unreachable", from
 * the loop (never inside the call). */
static bool send_script(rq_call *c, rclient_script *s, rclient_cb done, int argc, const char **argv, const size_t *lens)
{
    if (rclient_eval(c->rq->rc, s, done, c, argc, argv, lens) == 0) return true;
    struct timeval now = {0, 0};
    if (event_base_once(c->rq->base, -1, EV_TIMEOUT, on_later, c, &now) == 0) return true;
    free(c);
    return false;
}

/* ---------- submit ---------- */

static void on_enqueued(redisReply *reply, const char *err, void *arg)
{
    rq_call *c = arg;
    if (failed_reply(c, reply, err)) return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        deliver(c, BK_BAD_REPLY, "RQ's Redis answered the enqueue with something unexpected", NULL, -1, true);
    } else if (reply->integer < 0) {
        deliver(c, BK_CONFLICT, "RQ already has a job with this eval_id", NULL, -1, false);
    } else {
        json_t *doc = json_pack("{s:s, s:s, s:I}", "eval_id", c->eval_id, "status", "queued", "position",
                                (json_int_t)reply->integer);
        deliver(c, BK_OK, NULL, doc, reply->integer, false);
        json_decref(doc);
    }
}

static bool rq_submit(void *impl, const bk_job *j, bk_cb cb, void *arg)
{
    legacy_rq *rq = impl;
    const char *queue = rq->queue[j->priority <= 2 ? 0 : j->priority <= 5 ? 1 : 2];
    size_t data_len = 0;
    unsigned char *data = rq_job_data(rq->function, rq->pickle, j, &data_len);
    rq_call *c = data ? new_call(rq, j->eval_id, cb, arg) : NULL;
    if (!c) {
        free(data);
        return false;
    }
    c->submit = true;
    char job_key[200], queue_key[160], now[40], timeout[24], ttl[24], desc[1400];
    snprintf(job_key, sizeof(job_key), "rq:job:%s", j->eval_id);
    snprintf(queue_key, sizeof(queue_key), "rq:queue:%s", queue);
    rq_job_time(util_now(), now);
    snprintf(timeout, sizeof(timeout), "%d", j->timeout + RQ_JOB_GRACE_S);
    snprintf(ttl, sizeof(ttl), "%lld", rq->result_ttl_s);
    rq_job_description(rq->function, j, desc, sizeof(desc));
    const char *argv[] = {"3", job_key, queue_key, "rq:queues", j->eval_id,
                          "status", "queued", "created_at", now, "data", (const char *)data,
                          "success_callback_name", "", "failure_callback_name", "", "started_at", "",
                          "ended_at", "", "last_heartbeat", "", "worker_name", "", "origin", queue,
                          "description", desc, "enqueued_at", now, "timeout", timeout,
                          "result_ttl", ttl};
    size_t n = sizeof(argv) / sizeof(argv[0]), lens[sizeof(argv) / sizeof(argv[0])];
    for (size_t i = 0; i < n; i++) lens[i] = i == 10 ? data_len : strlen(argv[i]); /* data is bytes, no NUL */
    bool ok = send_script(c, &enqueue_script, on_enqueued, (int)n, argv, lens);
    free(data);
    return ok;
}

/* ---------- reading a job ---------- */

static void on_lookup(redisReply *reply, const char *err, void *arg)
{
    rq_call *c = arg;
    if (failed_reply(c, reply, err)) return;
    if (reply->type == REDIS_REPLY_NIL) {
        deliver(c, BK_NOT_FOUND, "RQ has no job with this eval_id", NULL, -1, false);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        deliver(c, BK_BAD_REPLY, "RQ's Redis answered the job look-up with something unexpected", NULL, -1, false);
        return;
    }
    if (reply->element[3]->type == REDIS_REPLY_INTEGER && reply->element[3]->integer == 1) {
        /* as the HTTP client does with a reply over the limit: it will not
         * get smaller, so completion tracking finishes it at once */
        bk_result r = {BK_BAD_REPLY, 0, -1,
                           "the RQ job's result is larger than LEGACY_MAX_REPLY_BYTES", NULL, true, false, NULL};
        c->cb(&r, c->arg);
        free(c);
        return;
    }
    json_t *doc = rq_job_doc(c->rq->pickle, c->eval_id, reply->element[0], reply->element[1], reply->element[2]);
    json_t *pos = json_object_get(doc, "position");
    if (doc) deliver(c, BK_OK, NULL, doc, json_is_integer(pos) ? (long long)json_integer_value(pos) : -1, false);
    else deliver(c, BK_INTERNAL, "out of memory reading the RQ job", NULL, -1, false);
    json_decref(doc);
}

static bool rq_get_task(void *impl, const char *eval_id, bk_cb cb, void *arg)
{
    legacy_rq *rq = impl;
    rq_call *c = new_call(rq, eval_id, cb, arg);
    if (!c) return false;
    char job_key[200], res_key[200];
    snprintf(job_key, sizeof(job_key), "rq:job:%s", eval_id);
    snprintf(res_key, sizeof(res_key), "rq:results:%s", eval_id);
    char max[24];
    snprintf(max, sizeof(max), "%zu", rq->max_result);
    const char *argv[] = {"2", job_key, res_key, eval_id, max};
    size_t lens[] = {1, strlen(job_key), strlen(res_key), strlen(eval_id), strlen(max)};
    return send_script(c, &lookup_script, on_lookup, 5, argv, lens);
}

/* ---------- cancel ---------- */

static void on_cancelled(redisReply *reply, const char *err, void *arg)
{
    rq_call *c = arg;
    if (failed_reply(c, reply, err)) return;
    long long k = reply->type == REDIS_REPLY_ARRAY && reply->elements && reply->element[0]->type == REDIS_REPLY_INTEGER
                      ? reply->element[0]->integer
                      : -1;
    if (k == 0) {
        deliver(c, BK_NOT_FOUND, "RQ has no job with this eval_id", NULL, -1, false);
    } else if (k == 1 || k == 2) {
        json_t *doc = json_pack("{s:s, s:s}", "eval_id", c->eval_id, "status", k == 1 ? "cancelled" : "stopping");
        deliver(c, BK_OK, NULL, doc, -1, false);
        json_decref(doc);
    } else if (k == 3 || k == 4) {
        json_t *doc = json_pack("{s:s, s:s}", "eval_id", c->eval_id, "error", k == 3 ? "running" : "finished");
        deliver(c, BK_CONFLICT, k == 3 ? "the RQ job is running" : "the RQ job has ended", doc, -1, false);
        json_decref(doc);
    } else {
        deliver(c, BK_BAD_REPLY, "RQ's Redis answered the cancel with something unexpected", NULL, -1, false);
    }
}

static bool rq_cancel_task(void *impl, const char *eval_id, bool terminate, bk_cb cb, void *arg)
{
    legacy_rq *rq = impl;
    rq_call *c = new_call(rq, eval_id, cb, arg);
    if (!c) return false;
    char job_key[200], now[32], stamp[40];
    snprintf(job_key, sizeof(job_key), "rq:job:%s", eval_id);
    double t = util_now();
    snprintf(now, sizeof(now), "%.6f", t);
    rq_job_time(t, stamp);
    const char *argv[] = {"1", job_key, eval_id, terminate ? "1" : "0", now, stamp};
    size_t lens[] = {1, strlen(job_key), strlen(eval_id), 1, strlen(now), strlen(stamp)};
    return send_script(c, &cancel_script, on_cancelled, 6, argv, lens);
}

/* ---------- queue status and health ---------- */

static void on_counts(redisReply *reply, const char *err, void *arg)
{
    rq_call *c = arg;
    if (failed_reply(c, reply, err)) return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 6) {
        deliver(c, BK_BAD_REPLY, "RQ's Redis answered the queue count with something unexpected", NULL, -1, false);
        return;
    }
    long long queued = 0, running = 0;
    json_t *queues = json_object(), *started = json_object();
    for (int i = 0; i < 3; i++) {
        long long q = reply->element[i]->type == REDIS_REPLY_INTEGER ? reply->element[i]->integer : 0;
        long long r = reply->element[3 + i]->type == REDIS_REPLY_INTEGER ? reply->element[3 + i]->integer : 0;
        queued += q;
        running += r;
        json_object_set_new(queues, c->rq->queue[i], json_integer((json_int_t)q));
        json_object_set_new(started, c->rq->queue[i], json_integer((json_int_t)r));
    }
    json_t *doc = json_pack("{s:I, s:I, s:I, s:I, s:o, s:o, s:s}", "queued", (json_int_t)queued, "processing",
                            (json_int_t)running, "queue_length", (json_int_t)queued, "total_tasks",
                            (json_int_t)(queued + running), "queues", queues, "started", started, "backend", "rq");
    deliver(c, doc ? BK_OK : BK_INTERNAL, doc ? NULL : "out of memory", doc, -1, false);
    json_decref(doc);
}

static bool rq_queue_status(void *impl, bk_cb cb, void *arg)
{
    legacy_rq *rq = impl;
    rq_call *c = new_call(rq, NULL, cb, arg);
    if (!c) return false;
    const char *argv[] = {"3", rq->queue[0], rq->queue[1], rq->queue[2]};
    size_t lens[] = {1, strlen(rq->queue[0]), strlen(rq->queue[1]), strlen(rq->queue[2])};
    return send_script(c, &counts_script, on_counts, 4, argv, lens);
}

static void on_ping(redisReply *reply, const char *err, void *arg)
{
    rq_call *c = arg;
    if (failed_reply(c, reply, err)) return;
    json_t *doc = json_pack("{s:s}", "status", "ok");
    deliver(c, BK_OK, NULL, doc, -1, false);
    json_decref(doc);
}

static bool rq_health(void *impl, bk_cb cb, void *arg)
{
    legacy_rq *rq = impl;
    rq_call *c = new_call(rq, NULL, cb, arg);
    if (!c) return false;
    static const char *argv[] = {"PING"};
    static const size_t lens[] = {4};
    if (rclient_command(rq->rc, on_ping, c, 1, argv, lens) == 0) return true;
    struct timeval now = {0, 0};
    if (event_base_once(rq->base, -1, EV_TIMEOUT, on_later, c, &now) == 0) return true;
    free(c);
    return false;
}

static void rq_destroy(void *impl)
{
    legacy_rq *rq = impl;
    if (!rq) return;
    rclient_free(rq->rc);
    free(rq);
}

static const backend_ops rq_ops = {
    .name = "rq",
    .error_code = "legacy_error",
    .timeout_code = "legacy_timeout",
    .can_terminate = true,
    .submit = rq_submit,
    .get_task = rq_get_task,
    .cancel_task = rq_cancel_task,
    .queue_status = rq_queue_status,
    .health = rq_health,
    .destroy = rq_destroy,
};

backend *legacy_rq_new(struct event_base *base, const legacy_rq_opts *o, char err[256])
{
    static bool scripts;
    if (!scripts) {
        rclient_script_init(&enqueue_script, enqueue_text);
        rclient_script_init(&lookup_script, lookup_text);
        rclient_script_init(&cancel_script, cancel_text);
        rclient_script_init(&counts_script, counts_text);
        scripts = true;
    }
    legacy_rq *rq = calloc(1, sizeof(*rq));
    if (!rq) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    rq->base = base;
    rq->pickle = o->pickle;
    rq->result_ttl_s = o->result_ttl_s;
    rq->max_result = o->max_result_bytes ? o->max_result_bytes : (size_t)LEGACY_MAX_REPLY_DEFAULT;
    snprintf(rq->function, sizeof(rq->function), "%s", o->function);
    /* "high, default ,low" -> three names */
    const char *p = o->queues;
    for (int i = 0; i < 3; i++) {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ') m--;
        snprintf(rq->queue[i], sizeof(rq->queue[i]), "%.*s", (int)(m < 127 ? m : 127), p);
        p += n;
    }
    rclient_opts ro = {.command_timeout_ms = o->timeout_ms, .connect_timeout_ms = o->timeout_ms, .name = "rq"};
    char rerr[256];
    if (!(rq->rc = rclient_new(base, o->url, &ro, rerr))) {
        snprintf(err, 256, "LEGACY_RQ_URL: %.*s", UTF8_CUT(rerr, 200));
        free(rq);
        return NULL;
    }
    backend *b = backend_new(&rq_ops, rq);
    if (!b) snprintf(err, 256, "out of memory");
    return b;
}
