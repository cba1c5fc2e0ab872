#include "results.h"

#include "rclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util.h"

/* Celery's own backend GETs before writing and never overwrites SUCCESS;
 * doing the check and the write in one script closes the race between two
 * writers (a worker finishing, a cancel arriving). */
const char results_write_unless_terminal_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local ok, rec = pcall(cjson.decode, cur)\n"
    "  if ok and type(rec) == 'table' then\n"
    "    local s = rec['status']\n"
    "    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return 0 end\n"
    "  end\n"
    "end\n"
    "redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n";

void results_write_argv(const char *key, const char *record, long expires_s, char expires_buf[24],
                        const char *argv[RESULTS_WRITE_ARGC], size_t len[RESULTS_WRITE_ARGC])
{
    snprintf(expires_buf, 24, "%ld", expires_s);
    argv[0] = "EVAL";
    argv[1] = results_write_unless_terminal_script;
    argv[2] = "1";
    argv[3] = key;
    argv[4] = record;
    argv[5] = expires_buf;
    for (int i = 0; i < RESULTS_WRITE_ARGC; i++) len[i] = strlen(argv[i]);
}

const rclient_script *results_write_script(void)
{
    static rclient_script s;
    if (!s.text) rclient_script_init(&s, results_write_unless_terminal_script);
    return &s;
}

int results_is_terminal(const char *status)
{
    return status && (strcmp(status, "SUCCESS") == 0 || strcmp(status, "FAILURE") == 0 ||
                      strcmp(status, "REVOKED") == 0);
}

json_t *results_exception(const char *exc_type, const char *message, const char *exc_module)
{
    return json_pack("{s:s, s:[s], s:s}", "exc_type", exc_type, "exc_message", message ? message : "",
                     "exc_module", exc_module);
}

char *results_record(const char *task_id, const char *status, json_t *result, const char *traceback)
{
    char date[32];
    int ready = results_is_terminal(status);
    if (ready) util_iso8601(util_now(), date);
    json_t *o = json_pack("{s:s, s:o, s:o, s:[], s:o, s:s}", "status", status, "result",
                          result ? result : json_null(), "traceback",
                          traceback ? json_string(traceback) : json_null(), "children", "date_done",
                          ready ? json_string(date) : json_null(), "task_id", task_id);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}
