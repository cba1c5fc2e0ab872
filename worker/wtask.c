/* wtask — one message, from taken to acknowledged.
 *
 *   taken (in unacked, executor slot claimed)
 *     -> checked: terminal result already there? revoked? expired? ETA?
 *     -> running: STARTED written, POST /execute, soft/hard limits, PROGRESS
 *     -> finished: result written (never over a terminal one), then acked;
 *        or re-scheduled for a retry, or dead-lettered — each together with
 *        the ack in one MULTI, so the message is always in exactly one place.
 * A failure to reach Redis leaves the message in unacked: it comes back
 * after the visibility timeout or when this worker restarts. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "jsonw.h"
#include "keys.h"
#include "log.h"
#include "results.h"
#include "util.h"
#include "wcore.h"
#include "wscripts.h"

#define KILL_TIMEOUT_MS 2000
#define KILL_RETRY_S 0.05
#define KILL_MAX_TRIES 100
#define WRITE_RETRY_S 0.5
/* A transaction that acks a message (with its DLQ entry, retry or
 * schedule) and was refused is sent again after ACK_RETRY_S, doubling up
 * to ACK_RETRY_MAX_S, ACK_MAX_TRIES times in all; then the message is
 * left in unacked, to come back after the visibility timeout.  Never at
 * once: a message that cannot be dead-lettered must not loop. */
#define ACK_RETRY_S 0.25
#define ACK_RETRY_MAX_S 30.0
#define ACK_MAX_TRIES 12
/* What a DLQ entry keeps of input it quotes: the original id of a refused
 * id, and the raw message when it is too large or a full entry could not
 * be built. */
#define DLQ_ORIG_ID_MAX 1024
#define DLQ_RAW_HEAD_MAX 4096
#define STORAGE_TIMEOUT_MS 5000

enum stage { ST_CHECKING, ST_RUNNING, ST_FINISHING };

struct task {
    worker *w;
    task *prev, *next;
    char *raw;
    size_t raw_len;
    char *tag;
    size_t exec;
    celery_message msg;
    bool decoded;
    char task_id[CELERY_TASK_ID_MAX + 1]; /* checked by celery_task_id_ok, or a substitute */
    char *orig_id;     /* the refused id, when task_id is its substitute */
    size_t msg_bytes;  /* the whole message's size (raw may hold only its head) */
    bool oversize;     /* over WORKER_MAX_MESSAGE_BYTES: raw is its head */
    const char *eval_id, *code, *language;
    int timeout;
    double t_taken, t_started;
    double soft_s, hard_s;
    enum stage stage;
    int checks_left;
    bool result_terminal, revoked, terminate, soft_fired, hard_fired, give_back_after_checks;
    bool known_id; /* task_id is the producer's (not a delivery tag) */
    bool released; /* counted in w->finishing: no longer holds an execution */
    httpc_req *exec_req;
    httpc_req *kill_req;
    int kill_tries;
    size_t req_bytes; /* the POST /execute body */
    struct event *soft_timer, *progress_timer, *kill_timer, *write_timer, *ack_timer;
    /* what to store when finishing */
    char *record;
    enum wm_outcome outcome;
    int write_tries;
    /* the ack transaction's extra commands, owned, for a send again */
    struct owned_cmd {
        int argc;
        char *argv[8];
        size_t len[8];
    } extra[2];
    size_t nextra;
    enum wm_broker_op ack_op;
    int ack_tries;
};

/* ---------- small helpers ---------- */



typedef struct cmd {
    int argc;
    const char *argv[8];
    size_t len[8];
} cmd;

static void cmd_set(cmd *c, int argc, ...)
{
    va_list ap;
    va_start(ap, argc);
    c->argc = argc;
    for (int i = 0; i < argc; i++) {
        c->argv[i] = va_arg(ap, const char *);
        c->len[i] = strlen(c->argv[i]);
    }
    va_end(ap);
}

/* MULTI, the commands, EXEC; `cb` gets the EXEC reply.  -1 when not sent. */
static int send_multi(rclient *rc, rclient_cb cb, void *arg, cmd *cmds, size_t n)
{
    static const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"}, *discard[] = {"DISCARD"};
    static const size_t l5[] = {5}, l4[] = {4}, l7[] = {7};
    if (rclient_command(rc, rclient_noop, NULL, 1, multi, l5) != 0) return -1;
    for (size_t i = 0; i < n; i++) {
        if (rclient_command(rc, rclient_noop, NULL, cmds[i].argc, cmds[i].argv, cmds[i].len) != 0) {
            rclient_send(rc, 1, discard, l7);
            return -1;
        }
    }
    if (rclient_command(rc, cb, arg, 1, exec, l4) != 0) {
        rclient_send(rc, 1, discard, l7);
        return -1;
    }
    return 0;
}

static void arm(struct event **ev, worker *w, event_callback_fn fn, void *arg, double s)
{
    if (!*ev) *ev = evtimer_new(w->base, fn, arg);
    if (!*ev) return; /* out of memory: the hard limit (curl timeout) still bounds the run */
    struct timeval tv = {(time_t)s, (suseconds_t)((s - floor(s)) * 1e6)};
    evtimer_add(*ev, &tv);
}

static void disarm(struct event **ev)
{
    if (*ev) event_free(*ev);
    *ev = NULL;
}

static const char *exec_url(const task *t) { return t->w->execs[t->exec].url; }

/* The largest request body executor i takes: what its GET /capacity said,
 * else (when it does not say) the reference executor's limit. */
static size_t exec_max_body(const worker *w, size_t i)
{
    return w->execs[i].max_body ? w->execs[i].max_body : EXECUTOR_DEFAULT_MAX_BODY;
}

static void task_free(task *t)
{
    worker *w = t->w;
    if (t->exec_req) httpc_cancel(t->exec_req);
    if (t->kill_req) httpc_cancel(t->kill_req);
    disarm(&t->soft_timer);
    disarm(&t->progress_timer);
    disarm(&t->kill_timer);
    disarm(&t->write_timer);
    disarm(&t->ack_timer);
    for (size_t i = 0; i < t->nextra; i++)
        for (int k = 0; k < t->extra[i].argc; k++) free(t->extra[i].argv[k]);
    if (t->prev) t->prev->next = t->next;
    else w->tasks = t->next;
    if (t->next) t->next->prev = t->prev;
    if (t->released) w->finishing--;
    w->in_flight--;
    metrics_set(w->m.in_flight, 0, (double)w->in_flight);
    celery_message_free(&t->msg);
    free(t->record);
    free(t->orig_id);
    free(t->raw);
    free(t->tag);
    free(t);
    worker_task_done(w);
}

/* Puts the message back on its queue now rather than after the visibility
 * timeout, then forgets the task.  If Redis cannot take even that, the
 * message stays in unacked and comes back later: nothing is lost. */
static void give_back(task *t, const char *why)
{
    worker *w = t->w;
    char nexec[16];
    snprintf(nexec, sizeof(nexec), "%zu", w->nexec);
    const char *a[6] = {"EVAL", wscript_give_back, "1", w->tagset_key, t->tag, nexec};
    size_t l[6] = {4, strlen(wscript_give_back), 1, strlen(w->tagset_key), strlen(t->tag), strlen(nexec)};
    LOG_WARN("message given back to its queue", "task_id", t->task_id, "reason", why);
    rclient_send(w->rc, 6, a, l);
    metrics_add(w->m.tasks, WO_RETURNED, 1);
    task_free(t);
}

/* A message that ran but could not be finished (its result could not be
 * stored, or memory ran out building it) is given back later, not at once:
 * parked in the retry schedule for GIVE_BACK_DELAY_S x 4^(n-1), and after
 * GIVE_BACK_MAX such returns by this worker it is dead-lettered, so that no
 * message can make a worker run it again and again.  The counts are this
 * process's (a small table, the oldest entry reused). */
#define GIVE_BACK_MAX 3
#define GIVE_BACK_DELAY_S 5.0
#define GIVE_BACK_SLOTS 64

static struct {
    char id[CELERY_TASK_ID_MAX + 1];
    int n;
    double at;
} given_back[GIVE_BACK_SLOTS];

static int count_give_back(const char *task_id)
{
    size_t oldest = 0;
    for (size_t i = 0; i < GIVE_BACK_SLOTS; i++) {
        if (given_back[i].n && strcmp(given_back[i].id, task_id) == 0) {
            given_back[i].at = util_monotonic();
            return ++given_back[i].n;
        }
        if (given_back[i].at < given_back[oldest].at) oldest = i;
    }
    snprintf(given_back[oldest].id, sizeof(given_back[oldest].id), "%s", task_id);
    given_back[oldest].n = 1;
    given_back[oldest].at = util_monotonic();
    return 1;
}

static void dead_letter(task *t, const char *reason, const char *policy, const char *exc_class, const char *message);
static void ack_with(task *t, enum wm_outcome outcome, cmd *extra, size_t nextra);

static void give_back_later(task *t, const char *why)
{
    int n = count_give_back(t->task_id);
    if (n > GIVE_BACK_MAX || t->oversize || !t->raw) {
        char msg[300];
        util_snprintf(msg, sizeof(msg), "given back %d times without finishing; last: %s", n - 1, why);
        dead_letter(t, "given_back", "none", "GivenBack", msg);
        return;
    }
    double delay = GIVE_BACK_DELAY_S * pow(4, n - 1), due = util_now() + delay;
    char score[32], delay_s[32];
    snprintf(score, sizeof(score), "%.6f", due);
    snprintf(delay_s, sizeof(delay_s), "%g", delay);
    LOG_WARN("message given back to its queue later", "task_id", t->task_id, "reason", why, "delay_s", delay_s);
    cmd extra[2];
    cmd_set(&extra[0], 4, "ZADD", KEY_SCHEDULE, score, t->raw);
    cmd_set(&extra[1], 4, "HSET", KEY_SCHEDULE_IDS, t->task_id, t->raw);
    extra[0].len[3] = extra[1].len[3] = t->raw_len;
    ack_with(t, WO_RETURNED, extra, t->known_id ? 2 : 1);
}

static void result_key(const task *t, char *buf, size_t n)
{
    snprintf(buf, n, RESULTS_KEY_PREFIX "%s", t->task_id);
}

static void send_state(task *t, const char *status, char *rec);

/* Writes a non-terminal state (STARTED, PROGRESS, RETRY): best effort.
 * `result` is stolen. */
static void write_state(task *t, const char *status, json_t *result)
{
    send_state(t, status, results_record(t->task_id, status, result, NULL));
}

/* The same with the result as JSON text. */
static void write_state_text(task *t, const char *status, const char *result_json, size_t len)
{
    send_state(t, status, results_record_text(t->task_id, status, result_json, len, NULL));
}

/* rec: the record (freed here; NULL = out of memory, nothing written). */
static void send_state(task *t, const char *status, char *rec)
{
    char key[340], exp[24];
    if (!rec) return;
    result_key(t, key, sizeof(key));
    const char *argv[RESULTS_WRITE_ARGC];
    size_t len[RESULTS_WRITE_ARGC];
    results_write_argv(key, rec, (long)t->w->cfg.result_expires_s, exp, argv, len);
    if (rclient_eval(t->w->res, results_write_script(), rclient_noop, NULL, RESULTS_WRITE_ARGC - 2, argv + 2,
                     len + 2) != 0)
        LOG_DEBUG("state not written: redis not connected", "task_id", t->task_id, "state", status);
    free(rec);
}

/* The execution is over (or never ran): the task only stores and acks now,
 * so the worker may take the next message meanwhile.  Called after the
 * finishing command is queued on the broker connection, so the take that
 * follows sees the executor slot this task held released. */
static void to_finishing(task *t)
{
    if (t->released) return;
    t->released = true;
    t->w->finishing++;
    worker_pump(t->w);
}

/* The commands that acknowledge the message and release what it held. */
static size_t ack_cmds(task *t, cmd *c, char *slot_key, size_t slot_len, char *running_key, size_t rlen)
{
    worker *w = t->w;
    snprintf(slot_key, slot_len, KEY_POOL_SLOTS_PREFIX "%zu", t->exec);
    snprintf(running_key, rlen, KEY_RUNNING_PREFIX "%s", t->task_id);
    cmd_set(&c[0], 3, "ZREM", KEY_UNACKED_INDEX, t->tag);
    cmd_set(&c[1], 3, "HDEL", KEY_UNACKED, t->tag);
    cmd_set(&c[2], 3, "SREM", w->tagset_key, t->tag);
    cmd_set(&c[3], 3, "ZREM", slot_key, t->tag);
    cmd_set(&c[4], 2, "DEL", running_key);
    return 5;
}

static void done_acked(task *t)
{
    wmetrics_task(&t->w->m, t->outcome);
    metrics_observe(t->w->m.duration, 0, util_monotonic() - t->t_taken);
    task_free(t);
}

/* The error of a transaction's reply: NULL when every command went
 * through.  MULTI applies the commands it queued even when one of them
 * fails, so each reply of EXEC is looked at. */
static const char *exec_error(redisReply *r, const char *err)
{
    if (!r) return err ? err : "no reply";
    if (r->type == REDIS_REPLY_ERROR) return r->str;
    if (r->type != REDIS_REPLY_ARRAY) return "transaction aborted";
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_ERROR) return r->element[i]->str;
    return NULL;
}

static void send_ack(task *t);

static void on_ack_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    send_ack(arg);
}

static void on_acked(redisReply *r, const char *err, void *arg)
{
    task *t = arg;
    const char *why = exec_error(r, err);
    if (why) {
        worker *w = t->w;
        worker_broker_error(w, t->ack_op, why);
        /* Every command of the transaction is idempotent: the whole of it
         * goes again, after a pause that grows, a bounded number of times.
         * Then (or when leaving) the message stays in unacked and comes
         * back after the visibility timeout, to be skipped then as a
         * duplicate of its stored result if it has one. */
        if (++t->ack_tries < ACK_MAX_TRIES && !w->returning) {
            double delay = fmin(ACK_RETRY_S * pow(2, t->ack_tries - 1), ACK_RETRY_MAX_S);
            char d[32];
            snprintf(d, sizeof(d), "%.2f", delay);
            LOG_WARN("ack not written; trying again", "task_id", t->task_id, "op", wm_broker_op_names[t->ack_op],
                     "error", why, "retry_in_s", d);
            arm(&t->ack_timer, w, on_ack_retry, t, delay);
            return;
        }
        LOG_ERROR("ack not written; the message stays in unacked until the visibility timeout", "task_id",
                  t->task_id, "op", wm_broker_op_names[t->ack_op], "error", why);
    }
    done_acked(t);
}

static void send_ack(task *t)
{
    cmd all[12];
    char slot_key[64], running_key[340];
    /* the extras first, then the acks */
    size_t k = 0;
    for (size_t i = 0; i < t->nextra; i++, k++) {
        all[k].argc = t->extra[i].argc;
        for (int j = 0; j < all[k].argc; j++) {
            all[k].argv[j] = t->extra[i].argv[j];
            all[k].len[j] = t->extra[i].len[j];
        }
    }
    k += ack_cmds(t, all + k, slot_key, sizeof(slot_key), running_key, sizeof(running_key));
    if (send_multi(t->w->rc, on_acked, t, all, k) != 0) {
        on_acked(NULL, "redis not connected", t);
        return;
    }
    to_finishing(t);
}

/* Acks, optionally with more commands in the same transaction (copied:
 * the transaction may have to be sent again). */
static void ack_with(task *t, enum wm_outcome outcome, cmd *extra, size_t nextra)
{
    t->outcome = outcome;
    t->stage = ST_FINISHING;
    for (size_t i = 0; i < nextra && i < 2; i++) {
        struct owned_cmd *o = &t->extra[i];
        t->nextra = i + 1;
        for (int k = 0; k < extra[i].argc; k++) {
            o->len[k] = extra[i].len[k];
            if (!(o->argv[k] = malloc(o->len[k] + 1))) {
                LOG_ERROR("out of memory acking; the message stays in unacked until the visibility timeout",
                          "task_id", t->task_id);
                done_acked(t);
                return;
            }
            o->argc = k + 1;
            memcpy(o->argv[k], extra[i].argv[k], o->len[k]);
            o->argv[k][o->len[k]] = '\0';
        }
    }
    send_ack(t);
}

/* ---------- storing the terminal result, then the ack ---------- */

static void write_final(task *t);

static void on_write_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    write_final(arg);
}

/* The result (and, with one Redis, the ack) did not go through: again in
 * a moment, or — after many tries, or when shutting down — back to the
 * queue.  True when the reply was such a failure. */
static bool final_failed(task *t, redisReply *r, const char *err)
{
    if (r && r->type != REDIS_REPLY_ERROR) return false;
    worker_broker_error(t->w, WB_RESULT, err ? err : r->str);
    if (++t->write_tries >= (int)ceil(t->w->cfg.result_retry_s / WRITE_RETRY_S) || t->w->returning) {
        LOG_ERROR("result not stored", "task_id", t->task_id, "error", err ? err : r->str);
        give_back_later(t, "result could not be stored");
        return true;
    }
    arm(&t->write_timer, t->w, on_write_retry, t, WRITE_RETRY_S);
    return true;
}

static void note_kept(task *t, redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        LOG_INFO("a terminal result was already stored; kept it", "task_id", t->task_id);
}

/* Another result backend: the result went there; now the ack. */
static void on_final_written(redisReply *r, const char *err, void *arg)
{
    task *t = arg;
    if (final_failed(t, r, err)) return;
    note_kept(t, r);
    ack_with(t, t->outcome, NULL, 0);
}

/* One Redis: result and ack went together. */
static void on_finished(redisReply *r, const char *err, void *arg)
{
    task *t = arg;
    if (final_failed(t, r, err)) return;
    note_kept(t, r);
    done_acked(t);
}

static void write_final(task *t)
{
    worker *w = t->w;
    char key[340], exp[24];
    result_key(t, key, sizeof(key));
    const char *argv[RESULTS_WRITE_ARGC + 4];
    size_t len[RESULTS_WRITE_ARGC + 4];
    results_write_argv(key, t->record, (long)w->cfg.result_expires_s, exp, argv, len);
    /* by SHA1: the script text crosses the wire only when Redis lacks it */
    if (w->res != w->rc) {
        if (rclient_eval(w->res, results_write_script(), on_final_written, t, RESULTS_WRITE_ARGC - 2, argv + 2,
                         len + 2) != 0) {
            on_final_written(NULL, "redis not connected", t);
            return;
        }
        if (!t->released) { /* the executor slot now, not at the ack: the next take may come first */
            char slot_key[64];
            snprintf(slot_key, sizeof(slot_key), KEY_POOL_SLOTS_PREFIX "%zu", t->exec);
            const char *z[3] = {"ZREM", slot_key, t->tag};
            size_t zl[3] = {4, strlen(slot_key), strlen(t->tag)};
            rclient_send(w->rc, 3, z, zl);
        }
        to_finishing(t);
        return;
    }
    static rclient_script finish_script;
    if (!finish_script.text) rclient_script_init(&finish_script, wscript_finish);
    char slot_key[64], running_key[340];
    snprintf(slot_key, sizeof(slot_key), KEY_POOL_SLOTS_PREFIX "%zu", t->exec);
    snprintf(running_key, sizeof(running_key), KEY_RUNNING_PREFIX "%s", t->task_id);
    size_t k = RESULTS_WRITE_ARGC;
    argv[k++] = t->tag;
    argv[k++] = w->tagset_key;
    argv[k++] = slot_key;
    argv[k++] = running_key;
    for (size_t i = RESULTS_WRITE_ARGC; i < k; i++) len[i] = strlen(argv[i]);
    if (rclient_eval(w->rc, &finish_script, on_finished, t, (int)k - 2, argv + 2, len + 2) != 0) {
        on_finished(NULL, "redis not connected", t);
        return;
    }
    to_finishing(t);
}

static void on_stored(const httpc_response *resp, void *arg)
{
    char *eval_id = arg;
    if (resp->error != HTTPC_OK || resp->status >= 300)
        LOG_WARN("storage service did not take the result", "eval_id", eval_id, "error",
                 resp->errmsg ? resp->errmsg : "bad status");
    free(eval_id);
}

/* Optional copy to STORAGE_SERVICE_URL; never delays the ack. */
static void store_copy(task *t, const char *body, size_t len)
{
    worker *w = t->w;
    if (!w->cfg.storage_url[0] || !t->eval_id) return;
    /* a shadow run (task shadow-<eval_id>, issue 5) is never stored as the eval's result */
    if (strncmp(t->task_id, "shadow-", 7) == 0) return;
    char *url = NULL, *id = strdup(t->eval_id);
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    char err[256];
    if (!id || asprintf(&url, "%s/results/%s", w->cfg.storage_url, t->eval_id) < 0) {
        url = NULL;
        goto done;
    }
    httpc_opts o = {.method = "PUT", .url = url, .body = body, .body_len = len,
                    .headers = headers, .timeout_ms = STORAGE_TIMEOUT_MS};
    if (httpc_start(w->hc, &o, on_stored, id, err)) id = NULL;
done:
    free(id);
    free(url);
}

static void finish_record(task *t, enum wm_outcome o);

/* Terminal result `status` with `result` (stolen). */
static void finish(task *t, const char *status, json_t *result, const char *traceback, enum wm_outcome o)
{
    t->record = results_record(t->task_id, status, result, traceback);
    finish_record(t, o);
}

/* SUCCESS with the evaluation's result as JSON text (NULL: out of memory). */
static void finish_success(task *t, char *result_json, size_t len, enum wm_outcome o)
{
    if (result_json) {
        store_copy(t, result_json, len);
        t->record = results_record_text(t->task_id, "SUCCESS", result_json, len, NULL);
    }
    free(result_json);
    finish_record(t, o);
}

static void finish_record(task *t, enum wm_outcome o)
{
    t->outcome = o;
    t->stage = ST_FINISHING;
    if (!t->record) {
        give_back_later(t, "out of memory building the result");
        return;
    }
    write_final(t);
}

static void finish_revoked(task *t, const char *why)
{
    finish(t, "REVOKED", results_exception("TaskRevokedError", why, "celery.exceptions"), NULL, WO_REVOKED);
}

/* ---------- dead letters and retries ---------- */

static const char dlq_add_script[] =
    "local old = redis.call('GET', KEYS[1])\n"
    "if old then\n"
    "  local ok, d = pcall(cjson.decode, old)\n"
    "  if ok and type(d) == 'table' and type(d.exception_class) == 'string' then\n"
    "    if redis.call('HINCRBY', '" KEY_DLQ_CLASSES "', d.exception_class, -1) <= 0 then\n"
    "      redis.call('HDEL', '" KEY_DLQ_CLASSES "', d.exception_class) end\n"
    "  end\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "redis.call('ZADD', '" KEY_DLQ_INDEX "', ARGV[2], ARGV[3])\n"
    "redis.call('HINCRBY', '" KEY_DLQ_CLASSES "', ARGV[4], 1)\n"
    "return 1\n";

static double first_failure(const task *t, double now)
{
    json_t *h = t->decoded ? json_object_get(t->msg.env, "headers") : NULL;
    json_t *f = json_object_get(h, "turnout_first_failure_at");
    return json_is_number(f) ? json_number_value(f) : now;
}

/* The DLQ entry, built whole: the original message when it is whole and
 * UTF-8 text (the DLQ API re-publishes it from there), else its head.
 * NULL when it cannot be built. */
static char *dlq_entry_full(const task *t, const char *eval_id, const char *reason, const char *policy,
                            const char *exc_class, const char *message, double now)
{
    json_t *e = json_pack("{s:s, s:s?, s:s?, s:s?, s:i, s:O?, s:O?, s:s, s:s, s:s, s:i, s:s?, s:f, s:f, s:s}",
                          "task_id", t->task_id, "eval_id", eval_id, "task",
                          t->decoded ? t->msg.task_name : NULL, "queue",
                          t->decoded ? t->msg.routing_key : NULL, "priority",
                          t->decoded ? t->msg.priority : 0, "args", t->decoded ? t->msg.args : NULL,
                          "kwargs", t->decoded ? t->msg.kwargs : NULL, "exception_class", exc_class,
                          "exception_message", message, "traceback", message, "retries",
                          t->decoded ? t->msg.retries : 0, "policy", policy, "first_failure_at",
                          first_failure(t, now), "last_failure_at", now, "reason", reason);
    if (!e) return NULL;
    int bad = 0;
    if (t->orig_id) bad |= json_object_set_new(e, "original_task_id", json_string(t->orig_id));
    bad |= json_object_set_new(e, "message_bytes", json_integer((json_int_t)t->msg_bytes));
    json_t *orig = t->oversize ? NULL : json_stringn(t->raw, t->raw_len);
    if (orig) {
        bad |= json_object_set_new(e, "message", orig);
    } else {
        /* too large, or not UTF-8: its head, cut at a character boundary */
        size_t n = util_utf8_trim_end(t->raw, t->raw_len < DLQ_RAW_HEAD_MAX ? t->raw_len : DLQ_RAW_HEAD_MAX);
        json_t *head = json_stringn(t->raw, n);
        bad |= json_object_set_new(e, "message_head", head ? head : json_string("(the message is not UTF-8 text)"));
    }
    char *entry = bad ? NULL : json_dumps(e, JSON_COMPACT);
    json_decref(e);
    return entry;
}

/* The least entry that still says what happened: id, reason, error and the
 * head of the raw bytes.  jsonw never refuses text (invalid UTF-8 becomes
 * U+FFFD) and every part is capped to fit `buf`, so this cannot fail. */
static size_t dlq_entry_minimal(const task *t, const char *reason, const char *exc_class, const char *message,
                                double now, char *buf, size_t cap)
{
    jsonw w;
    jw_init(&w, buf, cap);
    jw_obj_open(&w);
    jw_lit_key(&w, "task_id");
    jw_cstring(&w, t->task_id);
    if (t->orig_id) {
        jw_lit_key(&w, "original_task_id");
        jw_cstring(&w, t->orig_id);
    }
    jw_lit_key(&w, "exception_class");
    jw_string(&w, exc_class, util_utf8_prefix(exc_class, 128));
    jw_lit_key(&w, "exception_message");
    jw_string(&w, message, util_utf8_prefix(message, 1024));
    jw_lit_key(&w, "reason");
    jw_cstring(&w, reason);
    jw_lit_key(&w, "last_failure_at");
    jw_real(&w, now);
    jw_lit_key(&w, "message_bytes");
    jw_int(&w, (long long)t->msg_bytes);
    jw_lit_key(&w, "message_head");
    jw_string(&w, t->raw, util_utf8_trim_end(t->raw, t->raw_len < 2048 ? t->raw_len : 2048));
    jw_lit_key(&w, "minimal");
    jw_bool(&w, true);
    jw_obj_close(&w);
    size_t n = jw_len(&w);
    jw_free(&w); /* only the caller's storage was used */
    return n;
}

/* Every message the worker cannot run ends here, once, with a reason: the
 * DLQ entry and the ack in one transaction (sent again with backoff if
 * Redis refuses it, never given back to be taken again at once). */
static void dead_letter(task *t, const char *reason, const char *policy, const char *exc_class,
                        const char *message)
{
    double now = util_now();
    const char *eval_id = t->eval_id;
    if (!eval_id && t->known_id && strncmp(t->task_id, "celery-", 7) == 0) eval_id = t->task_id + 7;
    char *entry = dlq_entry_full(t, eval_id, reason, policy, exc_class, message, now);
    char minimal[32768];
    size_t entry_len;
    if (entry) {
        entry_len = strlen(entry);
    } else {
        LOG_WARN("the full DLQ entry could not be built; writing a minimal one", "task_id", t->task_id);
        entry_len = dlq_entry_minimal(t, reason, exc_class, message, now, minimal, sizeof(minimal));
    }
    char key[64 + CELERY_TASK_ID_MAX], score[32];
    snprintf(key, sizeof(key), KEY_DLQ_ENTRY_PREFIX "%s", t->task_id);
    snprintf(score, sizeof(score), "%.6f", now);
    cmd extra[1];
    cmd_set(&extra[0], 8, "EVAL", dlq_add_script, "1", key, entry ? entry : minimal, score, t->task_id, exc_class);
    extra[0].len[4] = entry_len;
    LOG_WARN("dead-lettered", "task_id", t->task_id, "eval_id", t->eval_id, "reason", reason, "error", message);
    /* The FAILURE record goes first (never over a terminal one); the DLQ
     * entry and the ack then go together. */
    if (t->known_id) write_state(t, "FAILURE", results_exception(exc_class, message, "turnout"));
    t->ack_op = WB_DEAD_LETTER;
    ack_with(t, strcmp(reason, "malformed") == 0 ? WO_MALFORMED : WO_DEAD_LETTERED, extra, 1);
    free(entry);
}

static void retry_or_dead_letter(task *t, enum wm_policy policy, const char *exc_class, const char *message)
{
    worker *w = t->w;
    const retry_policy *rp = policy == WP_NETWORK ? &w->cfg.retry_network : &w->cfg.retry_default;
    if (t->revoked) {
        finish_revoked(t, t->terminate ? "terminated" : "revoked");
        return;
    }
    if (w->returning) { /* the message is back on its queue: not a failure */
        task_free(t);
        return;
    }
    if (t->msg.retries >= rp->max) {
        dead_letter(t, "retries_exhausted", wm_policy_names[policy], exc_class, message);
        return;
    }
    double delay = rp->base_s * pow(rp->factor, t->msg.retries);
    if (delay > rp->cap_s) delay = rp->cap_s;
    if (w->cfg.retry_jitter) {
        unsigned r = 0;
        if (util_random(&r, sizeof(r)) == 0) delay = delay / 2 + delay / 2 * ((double)r / 4294967295.0);
    }
    double now = util_now(), due = now + delay;
    char eta[48], score[32], due_s[32];
    util_iso8601(due, eta);
    strcat(eta, "+00:00");
    snprintf(score, sizeof(score), "%.6f", due);
    snprintf(due_s, sizeof(due_s), "%.3f", delay);
    json_t *first = json_real(first_failure(t, now));
    size_t len = 0;
    char *env = celery_reencode(&t->msg, t->msg.retries + 1, eta, "turnout_first_failure_at", first, &len);
    json_decref(first);
    if (!env) {
        give_back_later(t, "out of memory scheduling the retry");
        return;
    }
    LOG_INFO("retry scheduled", "task_id", t->task_id, "eval_id", t->eval_id, "policy",
             wm_policy_names[policy], "delay_s", due_s, "error", message);
    metrics_add(w->m.retries, (size_t)policy, 1);
    json_t *res = results_exception(exc_class, message, "turnout");
    if (res) json_object_set_new(res, "eta", json_string(eta));
    write_state(t, "RETRY", res);
    cmd extra[2];
    cmd_set(&extra[0], 4, "ZADD", KEY_SCHEDULE, score, env);
    cmd_set(&extra[1], 4, "HSET", KEY_SCHEDULE_IDS, t->task_id, env);
    extra[0].len[3] = extra[1].len[3] = len;
    ack_with(t, WO_RETRIED, extra, 2);
    free(env);
}

/* ---------- running on an executor ---------- */

static void kill_execution(task *t);

static void on_parting_kill(const httpc_response *resp, void *arg)
{
    (void)resp;
    (void)arg;
}

static void on_kill_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kill_execution(arg);
}

static void on_killed(const httpc_response *resp, void *arg)
{
    task *t = arg;
    t->kill_req = NULL;
    /* 404: the executor has not registered the run yet (a cancel racing the
     * dispatch).  Ask again while our /execute call is still open, so no
     * execution is ever left running. */
    if (t->exec_req && (resp->error != HTTPC_OK || resp->status == 404) && ++t->kill_tries < KILL_MAX_TRIES)
        arm(&t->kill_timer, t->w, on_kill_retry, t, KILL_RETRY_S);
}

static void kill_execution(task *t)
{
    if (!t->exec_req || t->kill_req || !t->eval_id) return;
    char *url = NULL, err[256];
    if (asprintf(&url, "%s/kill/%s", exec_url(t), t->eval_id) < 0) return;
    httpc_opts o = {.method = "POST", .url = url, .timeout_ms = KILL_TIMEOUT_MS};
    t->kill_req = httpc_start(t->w->hc, &o, on_killed, t, err);
    free(url);
}

static void on_soft_limit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    task *t = arg;
    LOG_WARN("soft time limit reached; stopping the execution", "task_id", t->task_id, "eval_id", t->eval_id);
    t->soft_fired = true;
    kill_execution(t);
}


/* A duration in seconds, rounded to the microsecond and written without
 * the binary noise %.17g shows (0.011113, not 0.011113000000023021). */
static void jw_duration(jsonw *w, double s)
{
    char num[32];
    if (!isfinite(s) || s < 0) s = 0;
    size_t n = util_format_fixed(s, 6, num);
    while (n > 1 && num[n - 1] == '0' && num[n - 2] != '.') n--;
    jw_raw_value(w, num, n);
}

/* The evaluation's result, as JSON text (new string; NULL on OOM).
 * output and error are text of the given lengths (they may hold NULs).
 * `system_error` (or NULL) says the path, not the program, ended it: the
 * status is then what the user sees, and no verdict on the program. */
static char *eval_result(task *t, const char *status, const char *output, size_t output_len, const char *error,
                         size_t error_len, const json_t *exit_code, double duration, const char *system_error,
                         size_t *len)
{
    char stack[2048];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "eval_id");
    jw_cstring(&w, t->eval_id);
    jw_lit_key(&w, "status");
    jw_cstring(&w, status);
    jw_lit_key(&w, "output");
    jw_string(&w, output ? output : "", output ? output_len : 0);
    jw_lit_key(&w, "error");
    jw_string(&w, error ? error : "", error ? error_len : 0);
    jw_lit_key(&w, "exit_code");
    jw_value(&w, exit_code);
    jw_lit_key(&w, "executor");
    jw_cstring(&w, exec_url(t));
    jw_lit_key(&w, "duration_s");
    jw_duration(&w, duration);
    if (system_error) {
        jw_lit_key(&w, "system_error");
        jw_cstring(&w, system_error);
    }
    jw_obj_close(&w);
    char *text = jw_detach(&w, len);
    jw_free(&w);
    return text;
}

static void on_progress(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    task *t = arg;
    char stack[512];
    jsonw j;
    jw_init(&j, stack, sizeof(stack));
    jw_obj_open(&j);
    jw_lit_key(&j, "eval_id");
    jw_cstring(&j, t->eval_id);
    jw_lit_key(&j, "elapsed_s");
    jw_duration(&j, util_monotonic() - t->t_started);
    jw_lit_key(&j, "executor");
    jw_cstring(&j, exec_url(t));
    jw_obj_close(&j);
    if (!jw_failed(&j)) write_state_text(t, "PROGRESS", jw_text(&j), jw_len(&j));
    jw_free(&j);
    arm(&t->progress_timer, t->w, on_progress, t, t->w->cfg.progress_interval_s);
}

static void on_executed(const httpc_response *resp, void *arg)
{
    task *t = arg;
    worker *w = t->w;
    t->exec_req = NULL;
    disarm(&t->soft_timer);
    disarm(&t->progress_timer);
    disarm(&t->kill_timer);
    double took = util_monotonic() - t->t_started;
    char msg[400];

    if (resp->error == HTTPC_ECANCELLED || w->returning) {
        /* Shutting down after the grace: the message has been put back on
         * its queue, so whatever the executor says (often "killed", by our
         * own kill) must not become its result. */
        task_free(t);
        return;
    }
    if (resp->error == HTTPC_ETIMEOUT) {
        wmetrics_exec(&w->m, t->exec, WE_TIMEOUT);
        t->hard_fired = true;
        /* make sure it is gone from the executor too */
        t->exec_req = NULL;
        char *url = NULL, err[256];
        if (asprintf(&url, "%s/kill/%s", exec_url(t), t->eval_id) >= 0) {
            httpc_opts o = {.method = "POST", .url = url, .timeout_ms = KILL_TIMEOUT_MS};
            (void)httpc_start(w->hc, &o, on_parting_kill, NULL, err);
            free(url);
        }
        if (t->revoked) {
            finish_revoked(t, "terminated");
            return;
        }
        size_t len = 0;
        static const char hard[] = "hard time limit reached; the execution was killed";
        char *res = eval_result(t, "timeout", NULL, 0, hard, sizeof(hard) - 1, NULL, took, "hard_time_limit", &len);
        finish_success(t, res, len, WO_HARD_LIMIT); /* the executor's failure, not the program's verdict */
        return;
    }
    if (resp->error != HTTPC_OK) {
        wmetrics_exec(&w->m, t->exec, resp->error == HTTPC_ECONNECT ? WE_CONNECT : WE_ERROR);
        if (resp->error == HTTPC_ECONNECT) w->execs[t->exec].down_until = util_now() + 5;
        if (resp->error == HTTPC_EOTHER && t->req_bytes > exec_max_body(w, t->exec)) {
            /* An executor hangs up on a request over its body limit while it
             * is still being sent (evhttp answers 413 and closes): sending
             * the same request again would end the same way. */
            util_snprintf(msg, sizeof(msg),
                          "executor %s closed the connection while a %zu-byte request was being sent (over its "
                          "limit of %zu bytes): %s",
                          exec_url(t), t->req_bytes, exec_max_body(w, t->exec),
                          resp->errmsg ? resp->errmsg : "transfer failed");
            dead_letter(t, "not_retryable", "none", "RequestTooLarge", msg);
            return;
        }
        util_snprintf(msg, sizeof(msg), "executor %s: %s", exec_url(t), resp->errmsg ? resp->errmsg : "transfer failed");
        retry_or_dead_letter(t, WP_NETWORK, "ExecutorUnavailable", msg);
        return;
    }
    if (resp->status == 413) {
        wmetrics_exec(&w->m, t->exec, WE_ERROR);
        util_snprintf(msg, sizeof(msg), "executor %s refused the %zu-byte request as too large (413)", exec_url(t),
                      t->req_bytes);
        if (t->revoked) finish_revoked(t, t->terminate ? "terminated" : "revoked");
        else dead_letter(t, "not_retryable", "none", "RequestTooLarge", msg);
        return;
    }
    if (resp->status >= 500 || resp->status == 429) {
        wmetrics_exec(&w->m, t->exec, resp->status == 503 || resp->status == 429 ? WE_BUSY : WE_ERROR);
        snprintf(msg, sizeof(msg), "executor %s answered %ld", exec_url(t), resp->status);
        retry_or_dead_letter(t, WP_NETWORK, resp->status == 503 ? "ExecutorBusy" : "ExecutorError", msg);
        return;
    }
    if (resp->status == 409 && !t->revoked) {
        /* The executor is still running this eval: a run started by a worker
         * that died, or before the message was restored.  That run's answer
         * went to a closed connection, so run it again once it is over —
         * never a terminal FAILURE for an eval that is running fine. */
        wmetrics_exec(&w->m, t->exec, WE_BUSY);
        snprintf(msg, sizeof(msg), "executor %s is still running this eval (409); trying again after it ends",
                 exec_url(t));
        retry_or_dead_letter(t, WP_NETWORK, "ExecutorAlreadyRunning", msg);
        return;
    }
    if (resp->status == 408) {
        wmetrics_exec(&w->m, t->exec, WE_ERROR);
        snprintf(msg, sizeof(msg), "executor %s answered 408", exec_url(t));
        retry_or_dead_letter(t, WP_DEFAULT, "ExecutorTimeout", msg);
        return;
    }
    if (resp->status >= 400) {
        wmetrics_exec(&w->m, t->exec, WE_ERROR);
        json_t *doc = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *why = json_string_value(json_object_get(doc, "message"));
        util_snprintf(msg, sizeof(msg), "executor %s refused the evaluation (%ld): %.*s", exec_url(t), resp->status,
                      UTF8_CUT(why ? why : "no message", 200));
        json_decref(doc);
        if (t->revoked) finish_revoked(t, t->terminate ? "terminated" : "revoked");
        else dead_letter(t, "not_retryable", "none", "ExecutorRejected", msg);
        return;
    }
    /* \u0000 is valid JSON, and program output may hold NULs: allowed, and
     * carried by length from here on */
    json_t *doc = json_loadb(resp->body, resp->body_len, JSON_ALLOW_NUL, NULL);
    const char *status = json_string_value(json_object_get(doc, "status"));
    if (!status) {
        wmetrics_exec(&w->m, t->exec, WE_ERROR);
        json_decref(doc);
        snprintf(msg, sizeof(msg), "executor %s answered %ld without a status", exec_url(t), resp->status);
        retry_or_dead_letter(t, WP_DEFAULT, "ExecutorBadReply", msg);
        return;
    }
    wmetrics_exec(&w->m, t->exec, WE_OK);
    if (t->revoked) {
        json_decref(doc);
        finish_revoked(t, t->terminate ? "terminated" : "revoked");
        return;
    }
    enum wm_outcome o = strcmp(status, "completed") == 0 ? WO_COMPLETED
                        : strcmp(status, "timeout") == 0 ? WO_TIMEOUT
                        : strcmp(status, "killed") == 0  ? WO_KILLED
                                                         : WO_FAILED;
    if (t->soft_fired) { /* the soft limit stopped it: that is a timeout */
        status = "timeout";
        o = WO_TIMEOUT;
    }
    json_t *dur = json_object_get(doc, "duration_s");
    json_t *out = json_object_get(doc, "output"), *error = json_object_get(doc, "error");
    static const char soft[] = "soft time limit reached";
    size_t len = 0;
    char *res = eval_result(t, status, json_string_value(out), json_string_length(out),
                            t->soft_fired ? soft : json_string_value(error),
                            t->soft_fired ? sizeof(soft) - 1 : json_string_length(error), json_object_get(doc, "exit_code"),
                            json_is_number(dur) ? json_number_value(dur) : took, NULL, &len);
    json_decref(doc);
    finish_success(t, res, len, o);
}

static void dispatch(task *t)
{
    worker *w = t->w;
    char err[256], url[1100], key[340], ttl[24];
    double now = util_now();
    char bstack[2048], rstack[512], sstack[512];
    jsonw b, r, st;
    jw_init(&b, bstack, sizeof(bstack));
    jw_obj_open(&b);
    jw_lit_key(&b, "eval_id");
    jw_cstring(&b, t->eval_id);
    jw_lit_key(&b, "code");
    jw_cstring(&b, t->code);
    jw_lit_key(&b, "language");
    jw_cstring(&b, t->language);
    jw_lit_key(&b, "timeout");
    jw_int(&b, t->timeout);
    jw_obj_close(&b);
    t->req_bytes = jw_len(&b); /* 0 after an out-of-memory: caught below */
    if (w->execs[t->exec].max_body && t->req_bytes > w->execs[t->exec].max_body) {
        /* refused before a byte is sent: the executor said it would refuse
         * it (one that does not say may take more: it is sent) */
        char msg[400];
        jw_free(&b);
        util_snprintf(msg, sizeof(msg),
                      "the request is %zu bytes; executor %s takes at most %zu (the code is too large to run)",
                      t->req_bytes, exec_url(t), exec_max_body(w, t->exec));
        dead_letter(t, "not_retryable", "none", "RequestTooLarge", msg);
        return;
    }
    jw_init(&r, rstack, sizeof(rstack)); /* turnout:running:<task_id> */
    jw_obj_open(&r);
    jw_lit_key(&r, "worker");
    jw_cstring(&r, w->cfg.name);
    jw_lit_key(&r, "executor");
    jw_cstring(&r, exec_url(t));
    jw_lit_key(&r, "started_at");
    jw_real(&r, now);
    jw_lit_key(&r, "eval_id");
    jw_cstring(&r, t->eval_id);
    jw_obj_close(&r);
    jw_init(&st, sstack, sizeof(sstack)); /* the STARTED state's result */
    jw_obj_open(&st);
    jw_lit_key(&st, "pid");
    jw_int(&st, 0);
    jw_lit_key(&st, "hostname");
    jw_cstring(&st, w->cfg.name);
    jw_lit_key(&st, "executor");
    jw_cstring(&st, exec_url(t));
    jw_lit_key(&st, "started_at");
    jw_real(&st, now);
    jw_obj_close(&st);
    if (jw_failed(&b) || jw_failed(&r) || jw_failed(&st)) {
        jw_free(&b);
        jw_free(&r);
        jw_free(&st);
        retry_or_dead_letter(t, WP_DEFAULT, "OutOfMemory", "out of memory preparing the execution");
        return;
    }
    snprintf(key, sizeof(key), KEY_RUNNING_PREFIX "%s", t->task_id);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)t->hard_s + WORKER_SLOT_GRACE_S);
    const char *argv[5] = {"SET", key, jw_text(&r), "EX", ttl};
    size_t len[5] = {3, strlen(key), jw_len(&r), 2, strlen(ttl)};
    rclient_send(w->rc, 5, argv, len);
    write_state_text(t, "STARTED", jw_text(&st), jw_len(&st));
    jw_free(&r);
    jw_free(&st);

    static const char *const headers[] = {"Content-Type: application/json", NULL};
    snprintf(url, sizeof(url), "%s/execute", exec_url(t));
    httpc_opts o = {.method = "POST", .url = url, .body = jw_text(&b), .body_len = jw_len(&b), .headers = headers,
                    .timeout_ms = (long)(t->hard_s * 1000), .connect_timeout_ms = 2000,
                    .max_response_bytes = 8 * 1024 * 1024};
    t->stage = ST_RUNNING;
    t->t_started = util_monotonic();
    t->exec_req = httpc_start(w->hc, &o, on_executed, t, err);
    jw_free(&b);
    if (!t->exec_req) {
        retry_or_dead_letter(t, WP_DEFAULT, "OutOfMemory", err);
        return;
    }
    LOG_DEBUG("dispatched", "task_id", t->task_id, "eval_id", t->eval_id, "executor", exec_url(t));
    if (t->soft_s < t->hard_s) arm(&t->soft_timer, w, on_soft_limit, t, t->soft_s);
    arm(&t->progress_timer, w, on_progress, t, w->cfg.progress_interval_s);
}

/* ---------- checks before running ---------- */

static void after_checks(task *t)
{
    if (--t->checks_left > 0) return;
    worker *w = t->w;
    if (t->give_back_after_checks) {
        give_back(t, "redis lost right after the take");
        return;
    }
    if (t->result_terminal) {
        LOG_INFO("already finished; skipping the redelivered message", "task_id", t->task_id);
        ack_with(t, WO_DUPLICATE, NULL, 0);
        return;
    }
    if (t->revoked) {
        finish_revoked(t, "revoked");
        return;
    }
    double now = util_now();
    if (t->msg.expires) {
        double exp = celery_parse_iso8601(t->msg.expires);
        if (exp > 0 && exp < now) {
            finish_revoked(t, "expired");
            return;
        }
    }
    if (t->msg.eta) {
        double eta = celery_parse_iso8601(t->msg.eta);
        if (eta > now + 0.001) {
            /* Not due: into the schedule, acked in the same transaction. */
            char score[32];
            snprintf(score, sizeof(score), "%.6f", eta);
            cmd extra[2];
            cmd_set(&extra[0], 4, "ZADD", KEY_SCHEDULE, score, t->raw);
            cmd_set(&extra[1], 4, "HSET", KEY_SCHEDULE_IDS, t->task_id, t->raw);
            extra[0].len[3] = extra[1].len[3] = t->raw_len;
            ack_with(t, WO_SCHEDULED, extra, 2);
            return;
        }
    }
    if (w->returning) return; /* will be put back with the others */
    dispatch(t);
}

static void note_result(task *t, const char *rec_text, size_t len)
{
    json_t *rec = json_loadb(rec_text, len, 0, NULL);
    t->result_terminal = results_is_terminal(json_string_value(json_object_get(rec, "status")));
    json_decref(rec);
}

static void note_revoked(task *t, const char *marker, size_t len)
{
    json_t *m = json_loadb(marker, len, 0, NULL);
    t->revoked = true;
    t->terminate = json_is_true(json_object_get(m, "terminate"));
    json_decref(m);
}

static void on_result_checked(redisReply *r, const char *err, void *arg)
{
    task *t = arg;
    (void)err;
    if (r && r->type == REDIS_REPLY_STRING) note_result(t, r->str, r->len);
    after_checks(t);
}

static void on_revoked_checked(redisReply *r, const char *err, void *arg)
{
    task *t = arg;
    (void)err;
    if (r && r->type == REDIS_REPLY_STRING) note_revoked(t, r->str, r->len);
    after_checks(t);
}

/* Arguments of tasks.evaluate_code: [eval_id, code, language], kwargs timeout. */
static int check_args(task *t, char *err, size_t n)
{
    json_t *a = t->msg.args;
    if (json_array_size(a) < 2 || !json_is_string(json_array_get(a, 0)) || !json_is_string(json_array_get(a, 1))) {
        snprintf(err, n, "args must be [eval_id, code, language]");
        return -1;
    }
    t->eval_id = json_string_value(json_array_get(a, 0));
    t->code = json_string_value(json_array_get(a, 1));
    json_t *lang = json_array_get(a, 2);
    if (!lang) lang = json_object_get(t->msg.kwargs, "language");
    t->language = json_is_string(lang) ? json_string_value(lang) : "python";
    json_t *to = json_object_get(t->msg.kwargs, "timeout");
    t->timeout = json_is_integer(to) ? (int)json_integer_value(to) : 30;
    if (t->timeout < 1 || t->timeout > 86400) {
        snprintf(err, n, "kwargs.timeout must be 1..86400 seconds");
        return -1;
    }
    if (!util_valid_id(t->eval_id, strlen(t->eval_id), 128)) {
        snprintf(err, n, "args[0] (eval_id) must be 1-128 characters of [A-Za-z0-9_.:-]");
        return -1;
    }
    return 0;
}

/* Sets the task id from the message's id (NULL: it has none): the id
 * itself when celery_task_id_ok, else its substitute "invalid-id-<sha1>"
 * (the original, capped, goes into the DLQ entry); with no id at all, the
 * delivery tag (or its substitute).  Never truncates.  True when the id
 * is the producer's own. */
static bool set_task_id(task *t, const char *id, size_t len)
{
    if (id && celery_task_id_ok(id, len)) {
        memcpy(t->task_id, id, len);
        t->task_id[len] = '\0';
        return true;
    }
    if (!id) {
        id = t->tag;
        len = strlen(t->tag);
        if (celery_task_id_ok(id, len)) {
            memcpy(t->task_id, id, len + 1);
            return false;
        }
    }
    celery_invalid_id(id, len, t->task_id);
    free(t->orig_id);
    t->orig_id = strndup(id, util_utf8_trim_end(id, len < DLQ_ORIG_ID_MAX ? len : DLQ_ORIG_ID_MAX));
    return false;
}

/* Why an id was refused (err[256]). */
static void invalid_id_error(const char *id, size_t len, char *err, size_t n)
{
    if (len == 0) util_snprintf(err, n, "headers.id is empty; send an id of 1 to %d bytes", CELERY_TASK_ID_MAX);
    else if (len > CELERY_TASK_ID_MAX)
        util_snprintf(err, n, "headers.id is %zu bytes; ids are 1 to %d bytes of UTF-8 text", len,
                      CELERY_TASK_ID_MAX);
    else
        util_snprintf(err, n,
                      "headers.id \"%.*s\" is not UTF-8 text without control characters; send an id of 1 to %d "
                      "bytes of printable UTF-8 (spaces allowed)",
                      UTF8_CUT(id, 60), CELERY_TASK_ID_MAX);
}

void task_start(worker *w, const char *raw, size_t len, const char *tag, size_t exec_index,
                const task_prefetch *pre)
{
    char err[256];
    task *t = calloc(1, sizeof(*t));
    if (t) {
        t->raw = malloc(len + 1);
        t->tag = strdup(tag);
    }
    if (!t || !t->raw || !t->tag) {
        /* The message is safe in unacked; it comes back after a restart or
         * the visibility timeout. */
        LOG_ERROR("out of memory taking a message; it stays in unacked", "tag", tag);
        if (t) {
            free(t->raw);
            free(t->tag);
            free(t);
        }
        return;
    }
    memcpy(t->raw, raw, len);
    t->raw[len] = '\0';
    t->raw_len = len;
    t->msg_bytes = pre && pre->oversize_bytes ? pre->oversize_bytes : len;
    t->w = w;
    t->exec = exec_index;
    t->t_taken = util_monotonic();
    t->next = w->tasks;
    if (w->tasks) w->tasks->prev = t;
    w->tasks = t;
    w->in_flight++;
    metrics_set(w->m.in_flight, 0, (double)w->in_flight);

    if (pre && pre->oversize_bytes) {
        /* Only its head came from Redis (the take script measured it): it is
         * never parsed.  The id the script found, if any, gets the FAILURE. */
        t->oversize = true;
        t->known_id = set_task_id(t, pre->task_id, pre->task_id_len);
        util_snprintf(err, sizeof(err),
                      "the message is %zu bytes; WORKER_MAX_MESSAGE_BYTES allows %lld, so it was not run", t->msg_bytes,
                      w->cfg.max_message_bytes);
        dead_letter(t, "too_large", "none", "MessageTooLarge", err);
        return;
    }
    if (celery_decode(raw, len, &t->msg, err) != 0) {
        /* Keep the producer's task id when the headers hold one, so its
         * AsyncResult gets a FAILURE and the DLQ is searchable by eval_id. */
        json_t *env = json_loadb(raw, len, 0, NULL);
        json_t *tid = json_object_get(json_object_get(env, "headers"), "id");
        t->known_id = set_task_id(t, json_string_value(tid), json_string_length(tid));
        json_decref(env);
        dead_letter(t, "malformed", "none", "MalformedMessage", err);
        return;
    }
    t->decoded = true;
    size_t idlen = strlen(t->msg.task_id);
    t->known_id = set_task_id(t, t->msg.task_id, idlen);
    if (!t->known_id) {
        invalid_id_error(t->msg.task_id, idlen, err, sizeof(err));
        dead_letter(t, "invalid_id", "none", "InvalidTaskId", err);
        return;
    }
    if (strcmp(t->msg.task_name, w->cfg.task_name) != 0) {
        util_snprintf(err, sizeof(err), "task \"%.*s\" is not registered with this worker (it runs %.*s)",
                      UTF8_CUT(t->msg.task_name, 100), UTF8_CUT(w->cfg.task_name, 100));
        dead_letter(t, "unknown_task", "none", "NotRegistered", err);
        return;
    }
    if (check_args(t, err, sizeof(err)) != 0) {
        dead_letter(t, "malformed", "none", "MalformedMessage", err);
        return;
    }
    t->hard_s = w->cfg.hard_limit_s;
    t->soft_s = w->cfg.soft_limit_s;
    if (t->msg.hard_limit_s > 0 && t->msg.hard_limit_s < t->hard_s) t->hard_s = t->msg.hard_limit_s;
    if (t->msg.soft_limit_s > 0 && t->msg.soft_limit_s < t->soft_s) t->soft_s = t->msg.soft_limit_s;

    /* Is it already finished (a redelivery)?  Revoked?  Usually the take
     * script read both for this id already. */
    if (pre && pre->task_id && pre->task_id_len == strlen(t->task_id) &&
        memcmp(pre->task_id, t->task_id, pre->task_id_len) == 0) {
        if (pre->revoked) note_revoked(t, pre->revoked, pre->revoked_len);
        if (pre->result_read) {
            if (pre->result) note_result(t, pre->result, pre->result_len);
            t->checks_left = 1;
            after_checks(t);
            return;
        }
        char rk[340];
        result_key(t, rk, sizeof(rk));
        const char *g[2] = {"GET", rk};
        size_t gl[2] = {3, strlen(rk)};
        t->checks_left = 2;
        if (rclient_command(w->res, on_result_checked, t, 2, g, gl) != 0) {
            give_back(t, "redis lost right after the take");
            return;
        }
        after_checks(t);
        return;
    }
    /* Both in one round. */
    char key[340], rkey[340];
    result_key(t, key, sizeof(key));
    snprintf(rkey, sizeof(rkey), KEY_REVOKED_PREFIX "%s", t->task_id);
    const char *get1[2] = {"GET", key}, *get2[2] = {"GET", rkey};
    size_t l1[2] = {3, strlen(key)}, l2[2] = {3, strlen(rkey)};
    t->checks_left = 3;
    if (rclient_command(w->res, on_result_checked, t, 2, get1, l1) != 0) t->checks_left--;
    if (rclient_command(w->rc, on_revoked_checked, t, 2, get2, l2) != 0) t->checks_left--;
    if (t->checks_left < 3) {
        /* Redis went away between the take and now.  A reply still pending
         * would come back to a freed task, so the task is not freed until it
         * arrives: wait for it, then give the message back. */
        t->checks_left -= 1;
        if (t->checks_left == 0) give_back(t, "redis lost right after the take");
        else t->give_back_after_checks = true;
        return;
    }
    after_checks(t);
}

/* ---------- revokes and the periodic pass ---------- */

/* A revoke of a running evaluation stops it, with or without terminate:
 * whoever revoked it has stored (or will store) REVOKED, which the run's own
 * result can no longer replace, so letting it run would only hold a slot.
 * (Python workers need terminate to stop a running task; turnout's do not.) */
void task_revoke(worker *w, const char *task_id, bool terminate)
{
    for (task *t = w->tasks; t; t = t->next) {
        if (strcmp(t->task_id, task_id) != 0) continue;
        bool first = !t->revoked;
        t->revoked = true;
        t->terminate = t->terminate || terminate;
        if (first) LOG_INFO("revoke received", "task_id", task_id, "terminate", terminate ? "true" : "false");
        if (t->stage == ST_RUNNING) kill_execution(t);
    }
}

typedef struct marker_poll {
    worker *w;
    char task_id[];
} marker_poll;

static void on_marker_polled(redisReply *r, const char *err, void *arg)
{
    (void)err;
    marker_poll *mp = arg;
    if (r && r->type == REDIS_REPLY_STRING) {
        json_t *m = json_loadb(r->str, r->len, 0, NULL);
        task_revoke(mp->w, mp->task_id, json_is_true(json_object_get(m, "terminate")));
        json_decref(m);
    }
    free(mp);
}

void task_tick_all(worker *w)
{
    char now[32], key[340];
    snprintf(now, sizeof(now), "%.6f", util_now());
    for (task *t = w->tasks; t; t = t->next) {
        /* Keep long runs from being restored by others (visibility timeout). */
        const char *z[5] = {"ZADD", KEY_UNACKED_INDEX, "XX", now, t->tag};
        size_t zl[5] = {4, 13, 2, strlen(now), strlen(t->tag)};
        rclient_send(w->rc, 5, z, zl);
        if (t->stage != ST_RUNNING || t->revoked) continue;
        /* Pub/sub is lost while disconnected: the marker is the truth. */
        size_t idlen = strlen(t->task_id);
        marker_poll *mp = malloc(sizeof(*mp) + idlen + 1);
        if (!mp) continue;
        mp->w = w;
        memcpy(mp->task_id, t->task_id, idlen + 1);
        snprintf(key, sizeof(key), KEY_REVOKED_PREFIX "%s", t->task_id);
        const char *g[2] = {"GET", key};
        size_t gl[2] = {3, strlen(key)};
        if (rclient_command(w->rc, on_marker_polled, mp, 2, g, gl) != 0) free(mp);
    }
}

void task_abandon_all(worker *w)
{
    for (task *t = w->tasks; t; t = t->next) {
        if (t->stage == ST_RUNNING && t->exec_req) {
            t->kill_tries = KILL_MAX_TRIES; /* one attempt: we are leaving */
            kill_execution(t);
        }
    }
}

void task_free_all(worker *w)
{
    while (w->tasks) {
        task *t = w->tasks;
        t->w->draining = true;
        task_free(t);
    }
}

void task_write_revoked(worker *w, const char *task_id)
{
    char key[340], exp[24];
    char *rec = results_record(task_id, "REVOKED", results_exception("TaskRevokedError", "revoked", "celery.exceptions"),
                               NULL);
    if (!rec) return;
    snprintf(key, sizeof(key), RESULTS_KEY_PREFIX "%s", task_id);
    const char *argv[RESULTS_WRITE_ARGC];
    size_t len[RESULTS_WRITE_ARGC];
    results_write_argv(key, rec, (long)w->cfg.result_expires_s, exp, argv, len);
    rclient_send(w->res, RESULTS_WRITE_ARGC, argv, len);
    free(rec);
    wmetrics_task(&w->m, WO_REVOKED);
}
