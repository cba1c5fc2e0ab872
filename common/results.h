/* results — Celery result records (celery-task-meta-<task_id>, WIRE.md §C)
 * written the one way every turnout writer uses: never over a terminal
 * state (SUCCESS, FAILURE, REVOKED), SETEX and PUBLISH in one atomic step. */
#ifndef TURNOUT_RESULTS_H
#define TURNOUT_RESULTS_H

#include <stddef.h>

typedef struct json_t json_t;

/* EVAL script: KEYS[1] = result key, ARGV[1] = record JSON, ARGV[2] =
 * expiry in seconds.  Returns 1 when written, 0 when a terminal record was
 * already there (left untouched). */
extern const char results_write_unless_terminal_script[];

/* The same step as a Lua function, for scripts that do more in the same
 * atomic step (the worker's finish: result + ack):
 * write_result(key, record, expires_s) returns 1 or 0 as above. */
#define RESULTS_LUA_WRITE_FN                                                          \
    "local function write_result(key, rec, ttl)\n"                                    \
    "  local cur = redis.call('GET', key)\n"                                          \
    "  if cur then\n"                                                                 \
    "    local ok, old = pcall(cjson.decode, cur)\n"                                  \
    "    if ok and type(old) == 'table' then\n"                                       \
    "      local s = old['status']\n"                                                 \
    "      if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return 0 end\n" \
    "    end\n"                                                                       \
    "  end\n"                                                                         \
    "  redis.call('SETEX', key, ttl, rec)\n"                                          \
    "  redis.call('PUBLISH', key, rec)\n"                                             \
    "  return 1\n"                                                                    \
    "end\n"

#define RESULTS_KEY_PREFIX "celery-task-meta-"

/* The EVAL command running results_write_unless_terminal_script:
 * argv/len get RESULTS_WRITE_ARGC entries, all borrowed from the arguments
 * (key and record must outlive the send; `expires_buf` holds the seconds
 * as text).  hiredis copies the command when it is sent. */
#define RESULTS_WRITE_ARGC 6
void results_write_argv(const char *key, const char *record, long expires_s, char expires_buf[24],
                        const char *argv[RESULTS_WRITE_ARGC], size_t len[RESULTS_WRITE_ARGC]);

/* The same script for rclient_eval (by SHA1): argv/len from
 * results_write_argv + 2 (after "EVAL" and the text), RESULTS_WRITE_ARGC - 2
 * of them. */
typedef struct rclient_script rclient_script;
rclient_script *results_write_script(void);

/* Builds a Celery result record.  `result` is stolen (may be NULL = null).
 * date_done is set for ready states.  New string (caller frees), NULL on OOM. */
char *results_record(const char *task_id, const char *status, json_t *result, const char *traceback);

/* The same with the result already serialized as JSON (result_json may be
 * NULL = null); written without building a tree, for the worker's hot path. */
char *results_record_text(const char *task_id, const char *status, const char *result_json, size_t result_len,
                          const char *traceback);

/* Exception-shaped result {"exc_type","exc_message":[message],"exc_module"}; new reference. */
json_t *results_exception(const char *exc_type, const char *message, const char *exc_module);

/* True for SUCCESS, FAILURE, REVOKED. */
int results_is_terminal(const char *status);

#endif
