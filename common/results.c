#include "results.h"

#include "rclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonw.h"
#include "util.h"

/* Celery's own backend GETs before writing and never overwrites SUCCESS;
 * doing the check and the write in one script closes the race between two
 * writers (a worker finishing, a cancel arriving). */
const char results_write_unless_terminal_script[] =
    RESULTS_LUA_WRITE_FN
    "return write_result(KEYS[1], ARGV[1], ARGV[2])\n";

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

rclient_script *results_write_script(void)
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

/* Celery's key order: status, result, traceback, children, date_done, task_id. */
static char *record(const char *task_id, const char *status, const json_t *result, const char *result_json,
                    size_t result_len, const char *traceback)
{
    char date[32], stack[1024];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "status");
    jw_cstring(&w, status);
    jw_lit_key(&w, "result");
    if (result_json) jw_raw_value(&w, result_json, result_len);
    else jw_value(&w, result);
    jw_lit_key(&w, "traceback");
    jw_cstring(&w, traceback);
    jw_lit_key(&w, "children");
    jw_arr_open(&w);
    jw_arr_close(&w);
    jw_lit_key(&w, "date_done");
    if (results_is_terminal(status)) {
        util_iso8601(util_now(), date);
        jw_cstring(&w, date);
    } else {
        jw_null(&w);
    }
    jw_lit_key(&w, "task_id");
    jw_cstring(&w, task_id);
    jw_obj_close(&w);
    char *text = jw_detach(&w, NULL);
    jw_free(&w);
    return text;
}

char *results_record(const char *task_id, const char *status, json_t *result, const char *traceback)
{
    char *text = record(task_id, status, result, NULL, 0, traceback);
    json_decref(result);
    return text;
}

char *results_record_text(const char *task_id, const char *status, const char *result_json, size_t result_len,
                          const char *traceback)
{
    return record(task_id, status, NULL, result_json, result_len, traceback);
}
