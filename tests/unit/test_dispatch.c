/* The dispatcher alone: both paths are fake backends implementing the
 * backend interface, the route records live in a real redis-server started
 * for this test on a free loopback port (stopped by pid).  What is checked
 * is the contract of dispatch.c: one reply per submission, the fallback
 * table, the claim of a path that does not write the record, the settling
 * of a submit whose reply was lost, and that an eval whose first attempt
 * may have acted is never sent to a second path. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "dispatch.h"
#include "log.h"
#include "proxy.h"
#include "pserver.h"
#include "records.h"
#include "reply.h"
#include "unit.h"

/* ---------- a fake backend ---------- */

typedef struct fake {
    const char *name;
    bool writes_record;
    struct event_base *base;
    redisContext *redis;   /* to act "in Redis" before a lost reply */
    /* the next answer */
    enum bk_outcome outcome;
    bool maybe_done;
    bool store_record;     /* writes_record: SET the job's record before answering */
    /* what it saw */
    int submits;
    char last_eval[80];
    char last_record[1024];
} fake;

typedef struct fake_call {
    fake *f;
    bk_cb cb;
    void *arg;
    bk_result res;
    char existing[1024];
} fake_call;

static void fake_answer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fake_call *c = arg;
    c->res.existing = c->existing[0] ? c->existing : NULL;
    c->cb(&c->res, c->arg);
    free(c);
}

static bool fake_submit(void *impl, const bk_job *job, bk_cb cb, void *arg)
{
    fake *f = impl;
    fake_call *c = calloc(1, sizeof(*c));
    if (!c) return false;
    f->submits++;
    snprintf(f->last_eval, sizeof(f->last_eval), "%s", job->eval_id);
    snprintf(f->last_record, sizeof(f->last_record), "%s", job->record ? job->record : "");
    c->f = f;
    c->cb = cb;
    c->arg = arg;
    c->res = (bk_result){f->outcome, 0, 7, "fake says so", NULL, false, f->maybe_done, NULL};
    if (f->writes_record) {
        /* the contract of writes_record: a record already there is
         * reported, and nothing is done */
        redisReply *r = redisCommand(f->redis, "GET turnout:route:%s", job->eval_id);
        if (r && r->type == REDIS_REPLY_STRING) {
            snprintf(c->existing, sizeof(c->existing), "%s", r->str);
            c->res.outcome = BK_CONFLICT;
            c->res.maybe_done = false;
            f->submits--; /* not taken */
        }
        freeReplyObject(r);
    }
    if (f->writes_record && f->store_record && !c->existing[0]) {
        redisReply *r = redisCommand(f->redis, "SET turnout:route:%s %s", job->eval_id, job->record);
        freeReplyObject(r);
    }
    struct timeval now = {0, 1000};
    event_base_once(f->base, -1, EV_TIMEOUT, fake_answer, c, &now);
    return true;
}

static bool fake_none(void *impl, const char *id, bk_cb cb, void *arg)
{
    (void)impl, (void)id, (void)cb, (void)arg;
    return false;
}
static bool fake_cancel(void *impl, const char *id, bool t, bk_cb cb, void *arg)
{
    (void)impl, (void)id, (void)t, (void)cb, (void)arg;
    return false;
}
static bool fake_plain(void *impl, bk_cb cb, void *arg)
{
    (void)impl, (void)cb, (void)arg;
    return false;
}
static void fake_destroy(void *impl) { (void)impl; }

static const backend_ops writes_ops = {.name = "fake-writes", .writes_record = true, .own_store = true,
                                       .error_code = "fake_error", .timeout_code = "fake_timeout",
                                       .submit = fake_submit, .get_task = fake_none, .cancel_task = fake_cancel,
                                       .queue_status = fake_plain, .health = fake_plain, .destroy = fake_destroy};
static const backend_ops claims_ops = {.name = "fake-claims", .error_code = "fake_error",
                                       .timeout_code = "fake_timeout", .submit = fake_submit,
                                       .get_task = fake_none, .cancel_task = fake_cancel,
                                       .queue_status = fake_plain, .health = fake_plain, .destroy = fake_destroy};

/* ---------- a real redis-server ---------- */

static pid_t redis_pid;
static int redis_port;

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof(a);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(s, (struct sockaddr *)&a, &n) != 0) {
        close(s);
        return -1;
    }
    close(s);
    return ntohs(a.sin_port);
}

static redisContext *start_redis(void)
{
    redis_port = free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    redis_pid = fork();
    if (redis_pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisContext *c = redisConnect("127.0.0.1", redis_port);
        if (c && !c->err) return c;
        if (c) redisFree(c);
        usleep(20000);
    }
    return NULL;
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
    }
}

/* ---------- the proxy around the dispatcher ---------- */

static char broker_url[64];
static const char *env_lookup(const char *name, void *ud)
{
    (void)ud;
    if (strcmp(name, "CELERY_BROKER_URL") == 0) return broker_url;
    if (strcmp(name, "CELERY_ENABLED") == 0) return "true";
    if (strcmp(name, "REDIS_TIMEOUT_MS") == 0) return "200";
    if (strcmp(name, "LOG_LEVEL") == 0) return "error";
    return NULL;
}

static struct event_base *base;
static proxy *px;
static redisContext *redis;
static fake new_fake = {.name = "new", .writes_record = true}, legacy_fake = {.name = "legacy"};

typedef struct reply {
    int calls;
    int status;
    enum route_path path;
    bool duplicate;
    char body[2048];
} reply;

static void on_reply(const dispatch_result *res, void *arg)
{
    reply *r = arg;
    r->calls++;
    r->status = res->status;
    r->path = res->path;
    r->duplicate = res->duplicate;
    snprintf(r->body, sizeof(r->body), "%.*s", (int)res->body_len, res->body ? res->body : "");
}

static void loop_until(bool (*done)(void *), void *arg, double seconds)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (done(arg)) return;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > seconds) return;
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(500);
    }
}

static bool replied(void *arg) { return ((reply *)arg)->calls > 0; }
static bool broker_ready(void *arg)
{
    (void)arg;
    char dl[24];
    return rclient_is_up(px->broker) && rclient_deadline(px->broker, dl) > 0;
}

/* One submission of eval `id` routed to `path`; the reply after it. */
static reply submit_one(const char *id, enum route_path path)
{
    px->route.force_legacy = path == PATH_LEGACY;
    px->route.enabled = true;
    px->route.percentage = 1.0;
    json_t *doc = json_pack("{s:s, s:s, s:s}", "eval_id", id, "code", "print(1)", "language", "python");
    submission sub;
    sub_error err;
    reply r = {0};
    CHECK_EQ_INT(submission_from_json(doc, &px->cfg, &sub, &err), 0);
    json_decref(doc);
    dispatch_start(px, &sub, NULL, on_reply, &r);
    loop_until(replied, &r, 5);
    /* exactly once: nothing more comes */
    reply later = r;
    loop_until(replied, &(reply){0}, 0.05);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(later.calls, r.calls);
    return r;
}

static char *route_record(const char *id)
{
    static char out[1024];
    redisReply *rr = redisCommand(redis, "GET turnout:route:%s", id);
    snprintf(out, sizeof(out), "%s", rr && rr->type == REDIS_REPLY_STRING ? rr->str : "");
    freeReplyObject(rr);
    return out;
}

static void set_fake(fake *f, enum bk_outcome o, bool maybe, bool store)
{
    f->outcome = o;
    f->maybe_done = maybe;
    f->store_record = store;
    f->submits = 0;
}

static void test_new_path_takes_it(void)
{
    set_fake(&new_fake, BK_OK, false, false);
    set_fake(&legacy_fake, BK_OK, false, false);
    reply r = submit_one("d-new-1", PATH_NEW);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(r.path, PATH_NEW);
    CHECK_EQ_INT(new_fake.submits, 1);
    CHECK_EQ_INT(legacy_fake.submits, 0);
    CHECK_CONTAINS(new_fake.last_record, "\"path\":\"new\"");
    CHECK_CONTAINS(r.body, "\"queue_position\":7");
    /* a path that writes the record is given it, not claimed for it */
    CHECK_STR(route_record("d-new-1"), "");
}

static void test_refused_falls_back_along_the_table(void)
{
    set_fake(&new_fake, BK_DOWN, false, false);
    set_fake(&legacy_fake, BK_OK, false, false);
    px->cfg.fallback_to_legacy = true;
    reply r = submit_one("d-fb-1", PATH_NEW);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(r.path, PATH_LEGACY);
    CHECK_CONTAINS(r.body, "\"reason\":\"fallback\"");
    CHECK_EQ_INT(new_fake.submits, 1);
    CHECK_EQ_INT(legacy_fake.submits, 1);
    /* the legacy path's record was claimed before its call, and stays */
    CHECK_CONTAINS(route_record("d-fb-1"), "\"path\":\"legacy\"");
    CHECK_CONTAINS(legacy_fake.last_record, "\"reason\":\"fallback\"");
}

static void test_refused_without_fallback_is_503(void)
{
    set_fake(&new_fake, BK_FULL, false, false);
    set_fake(&legacy_fake, BK_OK, false, false);
    px->cfg.fallback_to_legacy = false;
    reply r = submit_one("d-nofb-1", PATH_NEW);
    px->cfg.fallback_to_legacy = true;
    CHECK_EQ_INT(r.status, 503);
    CHECK_EQ_INT(r.path, PATH_NONE);
    CHECK_CONTAINS(r.body, "no_path_available");
    CHECK_CONTAINS(r.body, "fake says so");
    CHECK_EQ_INT(legacy_fake.submits, 0);
}

static void test_lost_reply_settled_queued(void)
{
    /* the submit acted (the record is there) but its reply was lost:
     * Redis shows it queued, nothing goes to legacy */
    set_fake(&new_fake, BK_TIMEOUT, true, true);
    set_fake(&legacy_fake, BK_OK, false, false);
    reply r = submit_one("d-lost-1", PATH_NEW);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(r.path, PATH_NEW);
    CHECK_EQ_INT(legacy_fake.submits, 0);
}

static void test_lost_reply_settled_not_queued(void)
{
    /* the reply was lost and the record is not there: it never ran, so the
     * next path is safe */
    set_fake(&new_fake, BK_TIMEOUT, true, false);
    set_fake(&legacy_fake, BK_OK, false, false);
    reply r = submit_one("d-lost-2", PATH_NEW);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(r.path, PATH_LEGACY);
    CHECK_EQ_INT(legacy_fake.submits, 1);
}

static void test_maybe_done_on_a_claiming_path_is_never_sent_elsewhere(void)
{
    set_fake(&legacy_fake, BK_TIMEOUT, true, false);
    set_fake(&new_fake, BK_OK, false, false);
    reply r = submit_one("d-unconf-1", PATH_LEGACY);
    CHECK_EQ_INT(r.status, 504);
    CHECK_CONTAINS(r.body, "fake_timeout");
    CHECK_CONTAINS(r.body, "may have been queued");
    CHECK_CONTAINS(route_record("d-unconf-1"), "\"unconfirmed\":true");
    /* resubmitted while the new path would take it: its path again */
    set_fake(&legacy_fake, BK_OK, false, false);
    r = submit_one("d-unconf-1", PATH_NEW);
    CHECK_EQ_INT(r.status, 202);
    CHECK_EQ_INT(r.path, PATH_LEGACY);
    CHECK_EQ_INT(legacy_fake.submits, 1);
    CHECK_EQ_INT(new_fake.submits, 0); /* it found the record and took nothing */
    CHECK(strstr(route_record("d-unconf-1"), "unconfirmed\":true") == NULL);
}

static void test_failed_claiming_path_releases_its_claim(void)
{
    set_fake(&legacy_fake, BK_UNREACHABLE, false, false);
    reply r = submit_one("d-rel-1", PATH_LEGACY);
    CHECK_EQ_INT(r.status, 502);
    CHECK_CONTAINS(r.body, "fake_error");
    CHECK_EQ_INT(r.path, PATH_LEGACY);
    CHECK_STR(route_record("d-rel-1"), "");
}

static void test_duplicates_enqueue_nothing(void)
{
    /* a path that writes the record reports the stored one */
    set_fake(&legacy_fake, BK_OK, false, false);
    reply r = submit_one("d-dup-1", PATH_LEGACY);
    CHECK_EQ_INT(r.status, 202);
    set_fake(&new_fake, BK_OK, false, false);
    set_fake(&legacy_fake, BK_OK, false, false);
    r = submit_one("d-dup-1", PATH_LEGACY);
    CHECK_EQ_INT(r.status, 202);
    CHECK(r.duplicate);
    CHECK_EQ_INT(legacy_fake.submits, 0); /* the claim found the record */
    /* the claiming path says it has the eval already */
    set_fake(&legacy_fake, BK_CONFLICT, false, false);
    r = submit_one("d-dup-2", PATH_LEGACY);
    CHECK_EQ_INT(r.status, 202);
    CHECK(r.duplicate);
    CHECK_CONTAINS(route_record("d-dup-2"), "\"path\":\"legacy\"");
}

static void test_in_flight_gauge_returns_to_zero(void)
{
    for (size_t path = 0; path < PATH_NONE; path++) {
        double v = metrics_get(px->m.in_flight, metrics_at(px->m.in_flight, &path));
        CHECK(v == 0);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup("error", "logfmt", "test_dispatch");
    redis = start_redis();
    CHECK(redis != NULL);
    if (!redis) {
        stop_redis();
        fprintf(stderr, "test_dispatch: redis-server did not start (is it installed? make deps)\n");
        return 1;
    }
    snprintf(broker_url, sizeof(broker_url), "redis://127.0.0.1:%d/0", redis_port);
    base = event_base_new();
    proxy_settings s = {0};
    char errs[2048], err[256];
    CHECK_EQ_INT(pconfig_load(&s, env_lookup, NULL, errs, sizeof(errs)), 0);
    px = proxy_new(base, &s, err);
    CHECK(px != NULL);
    if (!px) {
        fprintf(stderr, "proxy_new: %s\n", err);
        stop_redis();
        return 1;
    }
    for (int i = 0; i < PATH_NONE; i++) backend_free(px->paths[i]);
    new_fake.base = legacy_fake.base = base;
    new_fake.redis = legacy_fake.redis = redis;
    px->paths[PATH_NEW] = backend_new(&writes_ops, &new_fake);
    px->paths[PATH_LEGACY] = backend_new(&claims_ops, &legacy_fake);
    loop_until(broker_ready, NULL, 5);
    CHECK(broker_ready(NULL));

    RUN(test_new_path_takes_it);
    RUN(test_refused_falls_back_along_the_table);
    RUN(test_refused_without_fallback_is_503);
    RUN(test_lost_reply_settled_queued);
    RUN(test_lost_reply_settled_not_queued);
    RUN(test_maybe_done_on_a_claiming_path_is_never_sent_elsewhere);
    RUN(test_failed_claiming_path_releases_its_claim);
    RUN(test_duplicates_enqueue_nothing);
    RUN(test_in_flight_gauge_returns_to_zero);

    proxy_free(px);
    event_base_free(base);
    redisFree(redis);
    stop_redis();
    UNIT_END();
}
