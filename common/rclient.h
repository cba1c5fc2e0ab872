/* rclient — an asynchronous Redis connection (hiredis 0.14 + libevent
 * adapter) that never hangs and heals itself.
 *
 * hiredis 0.14 has neither a connect timeout nor a command timeout, so each
 * command carries a deadline; when the oldest one passes, the connection is
 * dropped, which completes every pending command with an error, and a new
 * connection is made after a backoff (100 ms doubling to 500 ms).  Commands
 * are refused at once (-1, callback never called) while the connection is
 * not up, so callers can fall back without waiting. */
#ifndef TURNOUT_RCLIENT_H
#define TURNOUT_RCLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct redisReply;

typedef struct rclient rclient;

/* Called exactly once per accepted command.  On success `err` is NULL and
 * `reply` is valid only during the call (a REDIS_REPLY_ERROR reply is a
 * success at this level: the server answered).  On failure reply is NULL and
 * err says why ("timeout", "connection lost", "shutting down"). */
typedef void (*rclient_cb)(struct redisReply *reply, const char *err, void *arg);

/* Called when the connection goes up (true) or down (false). */
typedef void (*rclient_state_cb)(rclient *rc, bool up, void *ud);

typedef struct rclient_opts {
    long command_timeout_ms;  /* default 1000 */
    long connect_timeout_ms;  /* default 1000 */
    const char *name;         /* for logs, e.g. "broker" */
    rclient_state_cb on_state;
    void *ud;
    bool track_server_clock;  /* measure the server's clock (rclient_deadline) */
} rclient_opts;

/* Parses "redis://[:password@]host[:port][/db]".  host must be an IP
 * address or "localhost" (resolved once here: hiredis resolves with a
 * blocking call).  Returns 0 or -1 with err. */
int rclient_parse_url(const char *url, char *host, size_t hostlen, int *port, int *db,
                      char *password, size_t pwlen, char err[256])
    __attribute__((warn_unused_result));

/* New client; starts connecting at once.  NULL with err on a bad URL/OOM. */
rclient *rclient_new(struct event_base *base, const char *url, const rclient_opts *opts,
                     char err[256]);

/* Drops the connection and completes pending commands with "shutting
 * down".  Never call from inside an rclient callback. */
void rclient_free(rclient *rc);

/* Sends a command given as argv (binary safe).  0 when accepted (callback
 * will be called once), -1 when the connection is not up or OOM. */
int rclient_command(rclient *rc, rclient_cb cb, void *arg, int argc, const char **argv,
                    const size_t *argvlen) __attribute__((warn_unused_result));

/* Pub/sub: called for each message on `channel`; payload valid during the
 * call only. */
typedef void (*rclient_msg_cb)(const char *channel, const char *payload, size_t len, void *arg);

/* Subscribes now if connected and again after every reconnect.  A client
 * with subscriptions must be used for nothing else (Redis forbids other
 * commands on a subscribed connection).  Messages published while the
 * connection is down are lost: callers re-check state they care about.
 * 0, or -1 on out of memory. */
int rclient_subscribe(rclient *rc, const char *channel, rclient_msg_cb cb, void *arg)
    __attribute__((warn_unused_result));

/* The same for a glob pattern (PSUBSCRIBE); the callback gets the channel
 * the message was published on. */
int rclient_psubscribe(rclient *rc, const char *pattern, rclient_msg_cb cb, void *arg)
    __attribute__((warn_unused_result));

/* A Lua script sent by its SHA1 (EVALSHA) on every connection that has
 * run it once; the first call on a connection sends the text (EVAL, which
 * loads it), so a script keeps its place in a pipeline.  When the server
 * answers NOSCRIPT all the same (SCRIPT FLUSH mid-connection) the call is
 * retried as EVAL.  Scripts live as long as the program
 * (rclient_script_init once, e.g. at start-up) and are not thread-safe. */
#define RCLIENT_SCRIPT_CONNS 4 /* connections remembered per script */
typedef struct rclient_script {
    const char *text;
    char sha[41];
    unsigned long known_on[RCLIENT_SCRIPT_CONNS]; /* connections that have it loaded */
    size_t next_slot;
} rclient_script;

void rclient_script_init(rclient_script *s, const char *text);
/* A static script: `rclient_script s = RCLIENT_SCRIPT(text);` (its SHA1 is
 * computed on first use). */
#define RCLIENT_SCRIPT(t) {.text = (t)}

#define RCLIENT_EVAL_MAX_ARGS 64

/* Like rclient_command with argv = numkeys, keys..., args... (at most
 * RCLIENT_EVAL_MAX_ARGS; copied).  0 when sent, -1 when not. */
int rclient_eval(rclient *rc, rclient_script *script, rclient_cb cb, void *arg, int argc, const char **argv,
                 const size_t *argvlen) __attribute__((warn_unused_result));

/* A callback for replies nobody needs. */
void rclient_noop(struct redisReply *reply, const char *err, void *arg);

/* Fire and forget: for writes whose loss only costs freshness (states,
 * markers, scores); logged at debug level when not sent. */
void rclient_send(rclient *rc, int argc, const char **argv, const size_t *argvlen);

/* Checks Redis URL settings (empty values allowed) with rclient_parse_url;
 * appends "NAME=<why>" per problem to errs and returns the count. */
int rclient_check_urls(const char *const *names, const char *const *urls, size_t n, char *errs,
                       size_t errs_size);

/* Deadlines a script can check against the server's own clock, so that a
 * command whose reply never came (timeout, lost connection) cannot take
 * effect after the caller has given up on it.  With track_server_clock the
 * client samples the server's TIME on every connect and every few seconds,
 * and keeps the offset between that clock and its own monotonic clock with
 * its uncertainty (half the round trip, plus a drift allowance for the
 * sample's age).
 *
 * rclient_deadline writes, as decimal microseconds of the server's clock
 * (what `TIME` gives as s * 1e6 + us), the latest moment at which a command
 * sent now may still act: earlier than the moment this client will fail it
 * by its command timeout, by the uncertainty and a margin.  A script that
 * compares it with `TIME` and refuses past it can never act after its
 * callback has reported "timeout" or "connection lost".  Returns the
 * length, or 0 when the clock is not known (not connected yet, or no
 * sample since the last connect): then such a command must not be sent. */
size_t rclient_deadline(const rclient *rc, char out[24]);

bool rclient_is_up(const rclient *rc);
/* Up, tracking the server's clock, and not measured yet (just connected):
 * rclient_deadline answers 0 for about one round trip more. */
bool rclient_clock_pending(const rclient *rc);
int rclient_db(const rclient *rc);
size_t rclient_pending(const rclient *rc);

#endif
