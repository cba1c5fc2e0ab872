#include "producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "celery.h"
#include "jsonw.h"

struct producer {
    rclient *rc;
    const char *queue;
    const char *task_name;
    char origin[300];
};

typedef struct push_ctx {
    producer_cb cb;
    void *arg;
} push_ctx;

producer *producer_new(rclient *rc, const char *queue, const char *task_name)
{
    producer *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    char host[256] = "localhost";
    (void)gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    p->rc = rc;
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

static void on_pushed(struct redisReply *reply, const char *err, void *arg)
{
    push_ctx *c = arg;
    if (!reply) c->cb(false, 0, err, c->arg);
    else if (reply->type == REDIS_REPLY_INTEGER) c->cb(true, reply->integer, NULL, c->arg);
    else if (reply->type == REDIS_REPLY_ERROR) c->cb(false, 0, reply->str, c->arg);
    else c->cb(false, 0, "unexpected reply to LPUSH", c->arg);
    free(c);
}

int producer_submit(producer *p, const submission *sub, producer_cb cb, void *arg, char err[256])
{
    if (!rclient_is_up(p->rc)) {
        snprintf(err, 256, "redis not connected");
        return -1;
    }
    char key[256];
    size_t keylen = celery_queue_key(p->queue, sub->priority, key, sizeof(key));
    size_t len = 0;
    char *msg = producer_encode(p, sub, &len, err);
    push_ctx *c = malloc(sizeof(*c));
    int rc = -1;
    if (!msg || !c || keylen == 0) {
        if (msg && c) snprintf(err, 256, "queue name too long");
        else if (msg) snprintf(err, 256, "out of memory");
        free(c);
        goto done;
    }
    c->cb = cb;
    c->arg = arg;
    const char *argv[3] = {"LPUSH", key, msg};
    size_t argvlen[3] = {5, keylen, len};
    /* hiredis copies the command into its output buffer here, so msg can go */
    if (rclient_command(p->rc, on_pushed, c, 3, argv, argvlen) != 0) {
        snprintf(err, 256, "redis not connected");
        free(c);
        goto done;
    }
    rc = 0;
done:
    free(msg);
    return rc;
}
