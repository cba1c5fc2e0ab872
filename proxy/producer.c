#include "producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "celery.h"

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

char *producer_encode(const producer *p, const submission *sub, size_t *len, char err[256])
{
    char task_id[SUB_MAX_EVAL_ID + 8];
    snprintf(task_id, sizeof(task_id), "celery-%s", sub->eval_id);
    return producer_encode_task(p, sub, task_id, sub->eval_id, sub->priority, len, err);
}

char *producer_encode_task(const producer *p, const submission *sub, const char *task_id, const char *eval_id,
                           int priority, size_t *len, char err[256])
{
    json_t *args = json_pack("[ss#s#]", eval_id, sub->code, sub->code_len, sub->language,
                             sub->language_len);
    json_t *kwargs = json_pack("{s:i, s:s, s:i}", "timeout", sub->timeout, "engine", sub->engine,
                               "priority", priority);
    char *msg = NULL;
    if (!args || !kwargs) {
        snprintf(err, 256, "out of memory building the message");
        goto done;
    }
    celery_task t = {
        .task_name = p->task_name,
        .task_id = task_id,
        .queue = p->queue,
        .priority = priority,
        .args = args,
        .kwargs = kwargs,
        .origin = p->origin,
    };
    msg = celery_encode(&t, len, err);
done:
    json_decref(args);
    json_decref(kwargs);
    return msg;
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
