#include "rclient.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "cfg.h"
#include "log.h"
#include "sha1.h"
#include "util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 500

typedef struct pending {
    rclient *rc;
    rclient_cb cb;
    void *arg;
    double deadline;            /* monotonic seconds */
    struct pending *prev, *next; /* issue order == deadline order */
} pending;

enum rstate { RC_DOWN, RC_CONNECTING, RC_UP };

typedef struct subscription {
    char *channel;
    bool pattern; /* PSUBSCRIBE */
    rclient_msg_cb cb;
    void *arg;
    struct subscription *next;
} subscription;

struct rclient {
    struct event_base *base;
    redisAsyncContext *ac;
    enum rstate state;
    char host[64];
    int port, db;
    char password[256];
    char name[32];
    long cmd_timeout_ms, connect_timeout_ms, backoff_ms;
    rclient_state_cb on_state;
    void *ud;
    struct event *timer;  /* connect deadline, command deadline or reconnect */
    pending *head, *tail;
    size_t npending;
    const char *drop_reason; /* error text given to commands failed by a drop */
    subscription *subs;
    bool freeing;
    bool warned;          /* "unreachable" logged for this outage already */
    /* the server's clock: server_us = (monotonic now + clock_offset) * 1e6 */
    bool track_clock, clock_known, clock_asked;
    double clock_offset, clock_unc, clock_at; /* seconds; clock_at: monotonic time of the sample */
    struct event *clock_timer;
    unsigned long conn_id; /* this connection, unique in the process (scripts known on it) */
};

static unsigned long next_conn_id;

#define CLOCK_RESAMPLE_S 5.0
#define CLOCK_DRIFT 1e-4 /* allowance per second of a sample's age: far above real clock drift */

static void arm_timer(rclient *rc, double delay_s);
static void send_subscribe(rclient *rc, subscription *s);
static void start_connect(rclient *rc);

/* The URL as an error line may show it: no password. */
static void shown_url(const char *url, char out[200])
{
    const char *scheme = strstr(url, "://"), *at = scheme ? strchr(scheme + 3, '@') : NULL;
    if (at) snprintf(out, 200, "%.*s<credentials>%.*s", (int)(scheme + 3 - url) < 20 ? (int)(scheme + 3 - url) : 20, url,
                     UTF8_CUT(at, 150));
    else snprintf(out, 200, "%.*s", UTF8_CUT(url, 190));
}

int rclient_parse_url(const char *url, char *host, size_t hostlen, int *port, int *db,
                      char *password, size_t pwlen, char err[256])
{
    const char *p;
    char shown[200];
    shown_url(url, shown);
    *port = 6379;
    *db = 0;
    if (pwlen) password[0] = '\0';
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, 256, "\"%.*s\": only redis:// URLs are supported (no TLS in hiredis 0.14)", UTF8_CUT(shown, 150));
        return -1;
    }
    p = url + 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= pwlen) {
            snprintf(err, 256, "password in the Redis URL is too long");
            return -1;
        }
        memcpy(password, pw, n);
        password[n] = '\0';
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= hostlen) {
        snprintf(err, 256, "\"%s\": missing or too long host", shown);
        return -1;
    }
    memcpy(host, p, hl);
    host[hl] = '\0';
    p += hl;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 1 || v > 65535 || (*end && *end != '/')) {
            snprintf(err, 256, "\"%s\": port must be 1..65535", shown);
            return -1;
        }
        *port = (int)v;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || v < 0 || v > 1000000) {
            snprintf(err, 256, "\"%s\": database must be a number after the last /", shown);
            return -1;
        }
        *db = (int)v;
    }
    if (strcmp(host, "localhost") == 0) snprintf(host, hostlen, "127.0.0.1");
    unsigned char tmp[16];
    if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1) {
        snprintf(err, 256, "\"%.*s\": host must be an IP address (hiredis resolves names with a blocking call)",
                 UTF8_CUT(shown, 150));
        return -1;
    }
    return 0;
}

static void sample_clock(rclient *rc);

/* A failed connect: a warning once per outage (at start-up too, so a
 * process pointed at the wrong Redis says so), then debug lines for the
 * retries. */
static void unreachable(rclient *rc, const char *why)
{
    char addr[80];
    snprintf(addr, sizeof(addr), "%s:%d", rc->host, rc->port);
    if (!rc->warned) LOG_WARN("redis unreachable; retrying until it answers", "redis", rc->name, "address", addr,
                              "error", why);
    else LOG_DEBUG("redis connect failed", "redis", rc->name, "address", addr, "error", why);
    rc->warned = true;
}
static void on_clock_timer(evutil_socket_t fd, short what, void *arg);

static void set_state(rclient *rc, enum rstate s)
{
    bool was_up = rc->state == RC_UP;
    rc->state = s;
    if (s != RC_UP) rc->clock_known = false; /* the next server may be another one */
    if (s == RC_UP && !was_up && rc->track_clock && rc->clock_timer) {
        /* sampled from the next loop turn, not from inside hiredis's
         * connect callback (a command sent there reads state hiredis has
         * not set yet) */
        struct timeval now = {0, 0};
        evtimer_add(rc->clock_timer, &now);
    }
    if (was_up != (s == RC_UP) && rc->on_state && !rc->freeing) rc->on_state(rc, s == RC_UP, rc->ud);
}

static void unlink_pending(rclient *rc, pending *p)
{
    if (p->prev) p->prev->next = p->next;
    else rc->head = p->next;
    if (p->next) p->next->prev = p->prev;
    else rc->tail = p->prev;
    rc->npending--;
}

/* Every reply, and every failure of a dropped connection, passes here. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    pending *p = privdata;
    rclient *rc = p->rc;
    unlink_pending(rc, p);
    if (r) p->cb(r, NULL, p->arg);
    else p->cb(NULL, rc->drop_reason ? rc->drop_reason : "connection lost", p->arg);
    free(p);
    /* The next deadline is re-armed lazily by the timer itself. */
}

/* Tears the connection down from outside any hiredis callback; hiredis
 * completes every pending command (NULL reply) before returning. */
static void drop(rclient *rc, const char *why)
{
    redisAsyncContext *ac = rc->ac;
    if (!ac) return;
    rc->drop_reason = why;
    rc->ac = NULL;
    if (rc->freeing) LOG_DEBUG("redis connection closed", "redis", rc->name);
    else LOG_WARN("redis connection dropped", "redis", rc->name, "reason", why);
    set_state(rc, RC_DOWN);
    redisAsyncFree(ac); /* calls on_reply(NULL) for each pending, then on_disconnect */
    rc->drop_reason = NULL;
    if (!rc->freeing) arm_timer(rc, (double)rc->backoff_ms / 1000.0);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rclient *rc = ac->data;
    if (!rc || rc->ac != ac) return;
    if (status != REDIS_OK) {
        /* hiredis frees the context itself after this callback */
        unreachable(rc, ac->errstr);
        rc->ac = NULL;
        set_state(rc, RC_DOWN);
        arm_timer(rc, (double)rc->backoff_ms / 1000.0);
        if (rc->backoff_ms < BACKOFF_MAX_MS) rc->backoff_ms *= 2;
        if (rc->backoff_ms > BACKOFF_MAX_MS) rc->backoff_ms = BACKOFF_MAX_MS;
        return;
    }
    rc->backoff_ms = BACKOFF_MIN_MS;
    rc->warned = false;
    LOG_INFO("redis connected", "redis", rc->name);
    for (subscription *s = rc->subs; s; s = s->next) send_subscribe(rc, s);
    set_state(rc, RC_UP);
    arm_timer(rc, -1);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    rclient *rc = ac->data;
    if (!rc || rc->ac != ac) return; /* a drop() we started */
    /* The server closed the connection or an I/O error happened; hiredis
     * frees the context after this callback. */
    rc->ac = NULL;
    LOG_WARN("redis connection lost", "redis", rc->name, "error", ac->errstr);
    set_state(rc, RC_DOWN);
    arm_timer(rc, (double)rc->backoff_ms / 1000.0);
}

/* One timer serves three purposes depending on the state: reconnect after
 * backoff (DOWN), connect deadline (CONNECTING), oldest command deadline (UP). */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rclient *rc = arg;
    switch (rc->state) {
    case RC_DOWN:
        start_connect(rc);
        break;
    case RC_CONNECTING:
        if (rc->ac) {
            redisAsyncContext *ac = rc->ac;
            rc->ac = NULL;
            unreachable(rc, "connect timed out");
            redisAsyncFree(ac);
        }
        set_state(rc, RC_DOWN);
        arm_timer(rc, (double)rc->backoff_ms / 1000.0);
        break;
    case RC_UP:
        arm_timer(rc, -1);
        break;
    }
}

/* delay_s < 0: in UP state, arm for the oldest pending deadline (if any). */
static void arm_timer(rclient *rc, double delay_s)
{
    if (rc->state == RC_UP && delay_s < 0) {
        if (!rc->head) {
            evtimer_del(rc->timer);
            return;
        }
        double left = rc->head->deadline - util_monotonic();
        if (left <= 0) {
            drop(rc, "timeout");
            return;
        }
        delay_s = left;
    }
    if (delay_s < 0) delay_s = 0;
    struct timeval tv = {(time_t)delay_s, (suseconds_t)((delay_s - (double)(time_t)delay_s) * 1e6)};
    evtimer_add(rc->timer, &tv);
}

/* ---------- event loop glue ---------- */

/* hiredis 0.14's own libevent adapter re-adds a one-shot read event after
 * every read and arms a write event for every command: four epoll_ctl calls
 * and one more loop turn per round trip.  This one keeps the read event
 * armed (EV_PERSIST) and, once connected, writes queued commands from a
 * deferred callback in the same loop turn (commands queued together go out
 * in one write); only a write that would block waits for EV_WRITE.  Until
 * connected the write event stays: hiredis learns of the connect from it. */
typedef struct rc_events {
    redisAsyncContext *ac;
    struct event *rev, *wev, *flush;
    bool reading, flush_queued, in_flush, dead;
} rc_events;

static void rc_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redisAsyncHandleRead(((rc_events *)arg)->ac); /* may free the context and arg */
}

static void rc_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    redisAsyncHandleWrite(((rc_events *)arg)->ac);
}

static void rc_on_flush(evutil_socket_t fd, short what, void *arg)
{
    rc_events *e = arg;
    (void)fd;
    (void)what;
    e->flush_queued = false;
    e->in_flush = true;
    redisAsyncHandleWrite(e->ac);
    if (e->dead) { /* the context went away inside: its cleanup left e to us */
        free(e);
        return;
    }
    e->in_flush = false;
}

static void rc_add_read(void *data)
{
    rc_events *e = data;
    if (!e->reading) event_add(e->rev, NULL);
    e->reading = true;
}

static void rc_del_read(void *data)
{
    rc_events *e = data;
    event_del(e->rev);
    e->reading = false;
}

static void rc_add_write(void *data)
{
    rc_events *e = data;
    if (!(e->ac->c.flags & REDIS_CONNECTED) || e->in_flush) {
        event_add(e->wev, NULL); /* connecting, or the socket is full */
    } else if (!e->flush_queued) {
        e->flush_queued = true;
        event_active(e->flush, EV_WRITE, 1);
    }
}

static void rc_del_write(void *data)
{
    rc_events *e = data;
    event_del(e->wev);
}

static void rc_cleanup(void *data)
{
    rc_events *e = data;
    if (!e) return;
    event_free(e->rev);
    event_free(e->wev);
    event_free(e->flush); /* safe from inside its own callback */
    if (e->in_flush) e->dead = true;
    else free(e);
}

static int rc_attach(redisAsyncContext *ac, struct event_base *base)
{
    rc_events *e = calloc(1, sizeof(*e));
    if (!e) return -1;
    e->ac = ac;
    e->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, rc_on_read, e);
    e->wev = event_new(base, ac->c.fd, EV_WRITE, rc_on_write, e);
    e->flush = event_new(base, -1, 0, rc_on_flush, e);
    if (!e->rev || !e->wev || !e->flush) {
        if (e->rev) event_free(e->rev);
        if (e->wev) event_free(e->wev);
        if (e->flush) event_free(e->flush);
        free(e);
        return -1;
    }
    ac->ev.addRead = rc_add_read;
    ac->ev.delRead = rc_del_read;
    ac->ev.addWrite = rc_add_write;
    ac->ev.delWrite = rc_del_write;
    ac->ev.cleanup = rc_cleanup;
    ac->ev.data = e;
    rc_add_read(e);
    event_add(e->wev, NULL);
    return 0;
}

static void start_connect(rclient *rc)
{
    redisAsyncContext *ac = redisAsyncConnect(rc->host, rc->port);
    if (!ac || ac->err) {
        unreachable(rc, ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        set_state(rc, RC_DOWN);
        arm_timer(rc, (double)rc->backoff_ms / 1000.0);
        return;
    }
    ac->data = rc;
    rc->conn_id = ++next_conn_id;
    if (rc_attach(ac, rc->base) != 0) {
        redisAsyncFree(ac);
        arm_timer(rc, (double)rc->backoff_ms / 1000.0);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rc->ac = ac;
    rc->state = RC_CONNECTING;
    /* AUTH and SELECT are queued ahead of everything; hiredis writes them once
     * connected, and replies come back in order. Their failure shows in logs
     * and in every later command's error reply. */
    if (rc->password[0]) redisAsyncCommand(ac, NULL, NULL, "AUTH %s", rc->password);
    if (rc->db) redisAsyncCommand(ac, NULL, NULL, "SELECT %d", rc->db);
    arm_timer(rc, (double)rc->connect_timeout_ms / 1000.0);
}

rclient *rclient_new(struct event_base *base, const char *url, const rclient_opts *opts,
                     char err[256])
{
    rclient *rc = calloc(1, sizeof(*rc));
    if (!rc) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    if (rclient_parse_url(url, rc->host, sizeof(rc->host), &rc->port, &rc->db, rc->password,
                          sizeof(rc->password), err) != 0)
        goto err;
    rc->base = base;
    rc->cmd_timeout_ms = opts && opts->command_timeout_ms > 0 ? opts->command_timeout_ms : 1000;
    rc->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 1000;
    rc->backoff_ms = BACKOFF_MIN_MS;
    snprintf(rc->name, sizeof(rc->name), "%s", opts && opts->name ? opts->name : "redis");
    rc->on_state = opts ? opts->on_state : NULL;
    rc->ud = opts ? opts->ud : NULL;
    rc->timer = evtimer_new(base, on_timer, rc);
    if (!rc->timer) {
        snprintf(err, 256, "out of memory");
        goto err;
    }
    rc->track_clock = opts && opts->track_server_clock;
    if (rc->track_clock) {
        rc->clock_timer = evtimer_new(base, on_clock_timer, rc);
        if (!rc->clock_timer) {
            event_free(rc->timer);
            snprintf(err, 256, "out of memory");
            goto err;
        }
        struct timeval tv = {(time_t)CLOCK_RESAMPLE_S, 0};
        evtimer_add(rc->clock_timer, &tv);
    }
    start_connect(rc);
    return rc;
err:
    free(rc);
    return NULL;
}

void rclient_free(rclient *rc)
{
    if (!rc) return;
    rc->freeing = true;
    if (rc->ac) drop(rc, "shutting down");
    if (rc->timer) event_free(rc->timer);
    if (rc->clock_timer) event_free(rc->clock_timer);
    while (rc->subs) {
        subscription *next = rc->subs->next;
        free(rc->subs->channel);
        free(rc->subs);
        rc->subs = next;
    }
    free(rc);
}

/* hiredis keeps a subscription's callback and calls it for the SUBSCRIBE
 * confirmation and for every message; with NULL when the connection dies. */
static void on_sub_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    redisReply *reply = r;
    subscription *s = privdata;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
    redisReply *kind = reply->element[0];
    if (kind->type != REDIS_REPLY_STRING) return;
    if (!s->pattern && reply->elements == 3 && strcmp(kind->str, "message") == 0) {
        redisReply *payload = reply->element[2];
        if (payload->type == REDIS_REPLY_STRING) s->cb(s->channel, payload->str, payload->len, s->arg);
    } else if (s->pattern && reply->elements == 4 && strcmp(kind->str, "pmessage") == 0) {
        redisReply *channel = reply->element[2], *payload = reply->element[3];
        if (channel->type == REDIS_REPLY_STRING && payload->type == REDIS_REPLY_STRING)
            s->cb(channel->str, payload->str, payload->len, s->arg);
    }
}

static void send_subscribe(rclient *rc, subscription *s)
{
    if (!rc->ac) return;
    if (redisAsyncCommand(rc->ac, on_sub_reply, s, s->pattern ? "PSUBSCRIBE %b" : "SUBSCRIBE %b", s->channel,
                          strlen(s->channel)) != REDIS_OK)
        LOG_WARN("redis subscribe failed", "redis", rc->name, "channel", s->channel);
}

static int add_subscription(rclient *rc, const char *channel, bool pattern, rclient_msg_cb cb, void *arg)
{
    subscription *s = calloc(1, sizeof(*s));
    if (!s || !(s->channel = strdup(channel))) {
        free(s);
        return -1;
    }
    s->pattern = pattern;
    s->cb = cb;
    s->arg = arg;
    s->next = rc->subs;
    rc->subs = s;
    if (rc->state == RC_UP) send_subscribe(rc, s);
    return 0;
}

int rclient_subscribe(rclient *rc, const char *channel, rclient_msg_cb cb, void *arg)
{
    return add_subscription(rc, channel, false, cb, arg);
}

int rclient_psubscribe(rclient *rc, const char *pattern, rclient_msg_cb cb, void *arg)
{
    return add_subscription(rc, pattern, true, cb, arg);
}

/* ---------- commands in the Redis protocol (RESP), formatted here ---------- */

static size_t dec_len(size_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static char *put_dec(char *o, size_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(o, tmp + i, sizeof(tmp) - i);
    return o + (sizeof(tmp) - i);
}

/* "*<n>\r\n" */
static char *put_count(char *o, size_t n)
{
    *o++ = '*';
    o = put_dec(o, n);
    *o++ = '\r';
    *o++ = '\n';
    return o;
}

/* "$<len>\r\n<bytes>\r\n" */
static char *put_bulk(char *o, const char *s, size_t n)
{
    *o++ = '$';
    o = put_dec(o, n);
    *o++ = '\r';
    *o++ = '\n';
    memcpy(o, s, n);
    o += n;
    *o++ = '\r';
    *o++ = '\n';
    return o;
}

static size_t bulk_size(size_t n) { return 1 + dec_len(n) + 2 + n + 2; }

/* Queues a command already in RESP form (hiredis copies it). */
static int send_formatted(rclient *rc, rclient_cb cb, void *arg, const char *cmd, size_t len)
{
    if (rc->state != RC_UP || !rc->ac) return -1;
    pending *p = malloc(sizeof(*p));
    if (!p) return -1;
    p->rc = rc;
    p->cb = cb;
    p->arg = arg;
    p->deadline = util_monotonic() + (double)rc->cmd_timeout_ms / 1000.0;
    if (redisAsyncFormattedCommand(rc->ac, on_reply, p, cmd, len) != REDIS_OK) {
        free(p);
        return -1;
    }
    p->next = NULL;
    p->prev = rc->tail;
    if (rc->tail) rc->tail->next = p;
    else rc->head = p;
    rc->tail = p;
    if (rc->npending++ == 0) arm_timer(rc, -1);
    return 0;
}

int rclient_command(rclient *rc, rclient_cb cb, void *arg, int argc, const char **argv,
                    const size_t *argvlen)
{
    if (rc->state != RC_UP || !rc->ac || argc < 1) return -1;
    char stack[1024];
    size_t need = 1 + dec_len((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) need += bulk_size(argvlen[i]);
    /* one byte more, zeroed: hiredis peeks at the byte after the command's
     * first argument to see whether another follows, past the end of a
     * one-word command such as MULTI or TIME */
    char *cmd = need + 1 <= sizeof(stack) ? stack : malloc(need + 1);
    if (!cmd) return -1;
    char *o = put_count(cmd, (size_t)argc);
    for (int i = 0; i < argc; i++) o = put_bulk(o, argv[i], argvlen[i]);
    *o = '\0';
    int ret = send_formatted(rc, cb, arg, cmd, (size_t)(o - cmd));
    if (cmd != stack) free(cmd);
    return ret;
}

/* ---------- scripts by their SHA1 ---------- */

void rclient_script_init(rclient_script *s, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    memset(s, 0, sizeof(*s));
    unsigned char d[SHA1_DIGEST_LENGTH];
    sha1(text, strlen(text), d);
    s->text = text;
    for (int i = 0; i < SHA1_DIGEST_LENGTH; i++) {
        s->sha[2 * i] = hex[d[i] >> 4];
        s->sha[2 * i + 1] = hex[d[i] & 15];
    }
    s->sha[40] = '\0';
}

/* "*<n>\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n" with n <= 2 + RCLIENT_EVAL_MAX_ARGS */
#define EVALSHA_HEAD_MAX (1 + 3 + 2 + 13 + 47)

/* An EVALSHA in flight, with what a retry as EVAL needs: the arguments
 * after the script, already in RESP form, in one allocation. */
typedef struct eval_call {
    rclient *rc;
    unsigned long conn_id; /* the connection it went out on */
    rclient_script *script;
    rclient_cb cb;
    void *arg;
    int argc;        /* arguments after the script: numkeys, keys, args */
    size_t tail_len; /* their RESP bytes, at buf + EVALSHA_HEAD_MAX */
    char buf[];      /* room for the EVALSHA head, then the tail */
} eval_call;

static int send_eval(eval_call *c, bool by_sha);

/* The connections a script is known to be loaded on: EVALSHA goes only
 * there.  On any other the text goes (EVAL), which loads it, so a script
 * in a pipeline keeps its place among the commands around it: a NOSCRIPT
 * answer and a retry would run it after them.  (Only a SCRIPT FLUSH in
 * the middle of a connection still gets NOSCRIPT, and the retry.) */
static bool script_known(const rclient_script *s, unsigned long conn)
{
    for (size_t i = 0; i < RCLIENT_SCRIPT_CONNS; i++)
        if (s->known_on[i] == conn) return true;
    return false;
}

static void script_mark(rclient_script *s, unsigned long conn, bool known)
{
    for (size_t i = 0; i < RCLIENT_SCRIPT_CONNS; i++)
        if (s->known_on[i] == conn) {
            if (!known) s->known_on[i] = 0;
            return;
        }
    if (known) {
        s->known_on[s->next_slot] = conn;
        s->next_slot = (s->next_slot + 1) % RCLIENT_SCRIPT_CONNS;
    }
}

static void on_eval_reply(struct redisReply *reply, const char *err, void *arg)
{
    eval_call *c = arg;
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* the server has not seen it (SCRIPT FLUSH): send the text once */
        script_mark(c->script, c->conn_id, false);
        if (send_eval(c, false) == 0) return;
        c->cb(NULL, "redis not connected", c->arg);
    } else {
        if (reply) script_mark(c->script, c->conn_id, true); /* EVAL loaded it; EVALSHA found it */
        c->cb(reply, err, c->arg);
    }
    free(c);
}

static int send_eval(eval_call *c, bool by_sha)
{
    const char *tail = c->buf + EVALSHA_HEAD_MAX;
    size_t nargs = 2 + (size_t)c->argc;
    c->conn_id = c->rc->conn_id;
    if (by_sha) {
        char head[EVALSHA_HEAD_MAX];
        char *o = put_count(head, nargs);
        o = put_bulk(o, "EVALSHA", 7);
        o = put_bulk(o, c->script->sha, 40);
        size_t hl = (size_t)(o - head);
        char *start = c->buf + EVALSHA_HEAD_MAX - hl;
        memcpy(start, head, hl);
        return send_formatted(c->rc, on_eval_reply, c, start, hl + c->tail_len);
    }
    size_t tl = strlen(c->script->text);
    size_t need = 1 + dec_len(nargs) + 2 + bulk_size(4) + bulk_size(tl) + c->tail_len;
    char *cmd = malloc(need);
    if (!cmd) return -1;
    char *o = put_count(cmd, nargs);
    o = put_bulk(o, "EVAL", 4);
    o = put_bulk(o, c->script->text, tl);
    memcpy(o, tail, c->tail_len);
    int rc = send_formatted(c->rc, on_eval_reply, c, cmd, need);
    free(cmd);
    return rc;
}

int rclient_eval(rclient *rc, rclient_script *script, rclient_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen)
{
    if (rc->state != RC_UP || argc > RCLIENT_EVAL_MAX_ARGS || argc < 0) return -1;
    if (!script->sha[0]) rclient_script_init(script, script->text);
    size_t tail_len = 0;
    for (int i = 0; i < argc; i++) tail_len += bulk_size(argvlen[i]);
    eval_call *c = malloc(sizeof(*c) + EVALSHA_HEAD_MAX + tail_len);
    if (!c) return -1;
    c->rc = rc;
    c->script = script;
    c->cb = cb;
    c->arg = arg;
    c->argc = argc;
    c->tail_len = tail_len;
    char *o = c->buf + EVALSHA_HEAD_MAX;
    for (int i = 0; i < argc; i++) o = put_bulk(o, argv[i], argvlen[i]);
    if (send_eval(c, script_known(script, rc->conn_id)) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

/* ---------- the server's clock ---------- */

typedef struct clock_call {
    rclient *rc;
    double sent;
} clock_call;

static double clock_unc_now(const rclient *rc, double now)
{
    return rc->clock_unc + (now - rc->clock_at) * CLOCK_DRIFT;
}

static void on_time(struct redisReply *reply, const char *err, void *arg)
{
    (void)err;
    clock_call *c = arg;
    rclient *rc = c->rc;
    double now = util_monotonic();
    rc->clock_asked = false;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING && reply->element[1]->type == REDIS_REPLY_STRING &&
        rc->state == RC_UP) {
        double server = strtod(reply->element[0]->str, NULL) + strtod(reply->element[1]->str, NULL) / 1e6;
        double unc = (now - c->sent) / 2;
        /* the sample that bounds the server's clock best wins */
        if (!rc->clock_known || unc < clock_unc_now(rc, now)) {
            rc->clock_offset = server - (c->sent + now) / 2;
            rc->clock_unc = unc;
            rc->clock_at = now;
            rc->clock_known = true;
        }
    }
    free(c);
}

static void sample_clock(rclient *rc)
{
    if (rc->clock_asked || rc->state != RC_UP) return;
    clock_call *c = malloc(sizeof(*c));
    if (!c) return;
    c->rc = rc;
    c->sent = util_monotonic();
    const char *argv[] = {"TIME"};
    size_t lens[] = {4};
    if (rclient_command(rc, on_time, c, 1, argv, lens) != 0) {
        free(c);
        return;
    }
    rc->clock_asked = true;
}

static void on_clock_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rclient *rc = arg;
    sample_clock(rc);
    struct timeval tv = {(time_t)CLOCK_RESAMPLE_S, 0};
    evtimer_add(rc->clock_timer, &tv);
}

size_t rclient_deadline(const rclient *rc, char out[24])
{
    if (!rc->clock_known || rc->state != RC_UP) return 0;
    double now = util_monotonic();
    double timeout = (double)rc->cmd_timeout_ms / 1000.0;
    /* a tenth of the timeout (at least 5 ms) as margin, on top of what the
     * sample cannot tell */
    double margin = timeout / 10 > 0.005 ? timeout / 10 : 0.005;
    double budget = timeout - margin - clock_unc_now(rc, now);
    if (budget <= 0) return 0; /* the clock is too uncertain for this timeout */
    return util_format_ll((long long)((now + rc->clock_offset + budget) * 1e6), out);
}

bool rclient_clock_pending(const rclient *rc)
{
    return rc->track_clock && rc->state == RC_UP && !rc->clock_known;
}

bool rclient_is_up(const rclient *rc) { return rc->state == RC_UP; }
int rclient_db(const rclient *rc) { return rc->db; }
size_t rclient_pending(const rclient *rc) { return rc->npending; }

void rclient_noop(struct redisReply *reply, const char *err, void *arg)
{
    (void)reply;
    (void)err;
    (void)arg;
}

void rclient_send(rclient *rc, int argc, const char **argv, const size_t *argvlen)
{
    if (rclient_command(rc, rclient_noop, NULL, argc, argv, argvlen) != 0)
        LOG_DEBUG("redis command skipped: not connected", "redis", rc->name, "command", argv[0]);
}

int rclient_check_urls(const char *const *names, const char *const *urls, size_t n, char *errs,
                       size_t errs_size)
{
    int problems = 0;
    for (size_t i = 0; i < n; i++) {
        char err[256], host[64], pw[256];
        int port, db;
        if (!urls[i][0]) continue;
        if (rclient_parse_url(urls[i], host, sizeof(host), &port, &db, pw, sizeof(pw), err) != 0) {
            problems++;
            cfg_append_error(errs, errs_size, "%s=%s\n", names[i], err);
        }
    }
    return problems;
}
