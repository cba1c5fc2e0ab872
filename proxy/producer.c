#include "producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "celery.h"
#include "jsonw.h"

struct producer {
    const char *queue;
    const char *task_name;
    char origin[300];
};

producer *producer_new(const char *queue, const char *task_name)
{
    producer *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    char host[256] = "localhost";
    (void)gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    p->queue = queue;
    p->task_name = task_name;
    snprintf(p->origin, sizeof(p->origin), "turnout%d@%s", (int)getpid(), host);
    return p;
}

void producer_free(producer *p) { free(p); }

static int encode_task(const producer *p, const submission *sub, const char *task_id, const char *eval_id,
                       int priority, jsonw *out, char err[256]);

int producer_encode_into(const producer *p, const submission *sub, jsonw *out, char err[256])
{
    char task_id[SUB_MAX_EVAL_ID + 8];
    memcpy(task_id, "celery-", 7);
    memcpy(task_id + 7, sub->eval_id, strlen(sub->eval_id) + 1);
    return encode_task(p, sub, task_id, sub->eval_id, sub->priority, out, err);
}

char *producer_encode(const producer *p, const submission *sub, size_t *len, char err[256])
{
    jsonw out;
    jw_init(&out, NULL, 0);
    char *msg = NULL;
    if (producer_encode_into(p, sub, &out, err) == 0) {
        msg = jw_detach(&out, len);
        if (!msg) snprintf(err, 256, "out of memory building the message");
    }
    jw_free(&out);
    return msg;
}

char *producer_encode_task(const producer *p, const submission *sub, const char *task_id, const char *eval_id,
                           int priority, size_t *len, char err[256])
{
    jsonw out;
    jw_init(&out, NULL, 0);
    char *msg = NULL;
    if (encode_task(p, sub, task_id, eval_id, priority, &out, err) == 0) {
        msg = jw_detach(&out, len);
        if (!msg) snprintf(err, 256, "out of memory building the message");
    }
    jw_free(&out);
    return msg;
}

/* args [eval_id, code, language] and kwargs {timeout, engine, priority}
 * written straight from the submission, with their reprs: no jansson tree. */
static int encode_task(const producer *p, const submission *sub, const char *task_id, const char *eval_id,
                       int priority, jsonw *out, char err[256])
{
    char args_stack[1024], kwargs_stack[256], ar_stack[512], kr_stack[256];
    jsonw args, kwargs, ar, kr;
    int rc = -1;
    size_t eval_id_len = strlen(eval_id), engine_len = strlen(sub->engine);
    jw_init(&args, args_stack, sizeof(args_stack));
    jw_init(&kwargs, kwargs_stack, sizeof(kwargs_stack));
    jw_init(&ar, ar_stack, sizeof(ar_stack));
    jw_init(&kr, kr_stack, sizeof(kr_stack));

    jw_arr_open(&args);
    jw_string(&args, eval_id, eval_id_len);
    jw_string(&args, sub->code, sub->code_len);
    jw_string(&args, sub->language, sub->language_len);
    jw_arr_close(&args);
    jw_obj_open(&kwargs);
    jw_lit_key(&kwargs, "timeout");
    jw_int(&kwargs, sub->timeout);
    jw_lit_key(&kwargs, "engine");
    jw_string(&kwargs, sub->engine, engine_len);
    jw_lit_key(&kwargs, "priority");
    jw_int(&kwargs, priority);
    jw_obj_close(&kwargs);

    /* ('<eval_id>', '<code>', '<language>') and {'timeout': N, 'engine': '<e>', 'priority': N} */
    jw_putc(&ar, '(');
    celery_repr_str(&ar, eval_id, eval_id_len, CELERY_REPR_MAX);
    jw_put(&ar, ", ", 2);
    celery_repr_str(&ar, sub->code, sub->code_len, CELERY_REPR_MAX);
    if (jw_len(&ar) <= CELERY_REPR_MAX) {
        jw_put(&ar, ", ", 2);
        celery_repr_str(&ar, sub->language, sub->language_len, CELERY_REPR_MAX);
        jw_putc(&ar, ')');
    }
    celery_repr_cut(&ar, CELERY_REPR_MAX);
    jw_put(&kr, "{'timeout': ", 12);
    jw_put_int(&kr, sub->timeout);
    jw_put(&kr, ", 'engine': ", 12);
    celery_repr_str(&kr, sub->engine, engine_len, CELERY_REPR_MAX);
    jw_put(&kr, ", 'priority': ", 14);
    jw_put_int(&kr, priority);
    jw_putc(&kr, '}');
    celery_repr_cut(&kr, CELERY_REPR_MAX);
    if (jw_failed(&args) || jw_failed(&kwargs) || jw_failed(&ar) || jw_failed(&kr)) {
        snprintf(err, 256, "out of memory building the message");
        goto done;
    }
    celery_body body = {
        .args_json = jw_text(&args),
        .args_len = jw_len(&args),
        .kwargs_json = jw_text(&kwargs),
        .kwargs_len = jw_len(&kwargs),
        .argsrepr = jw_text(&ar),
        .argsrepr_len = jw_len(&ar),
        .kwargsrepr = jw_text(&kr),
        .kwargsrepr_len = jw_len(&kr),
    };
    celery_task t = {
        .task_name = p->task_name,
        .task_id = task_id,
        .queue = p->queue,
        .priority = priority,
        .body = &body,
        .origin = p->origin,
    };
    rc = celery_encode_into(&t, out, err);
done:
    jw_free(&args);
    jw_free(&kwargs);
    jw_free(&ar);
    jw_free(&kr);
    return rc;
}
