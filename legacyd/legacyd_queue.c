#include "legacyd_queue.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MIN_BUCKETS 1024

typedef struct lq_list {
    lq_task *head, *tail;
    size_t len;
} lq_list;

struct lq {
    lq_task **buckets; /* chained index: eval_id -> task */
    size_t nbuckets;   /* power of two */
    size_t ntasks;
    uint64_t seed;     /* random per process: clients choose the keys */
    uint64_t next_token;
    lq_list fifo;      /* queued, oldest first */
    lq_list results;   /* finished, in completion order */
    size_t processing;
};

/* FNV-1a with a random seed and a final avalanche (the murmur3 mixer). */
static uint64_t hash_id(const lq *q, const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ q->seed;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static void list_append(lq_list *l, lq_task *t)
{
    t->next = NULL;
    t->prev = l->tail;
    if (l->tail) l->tail->next = t;
    else l->head = t;
    l->tail = t;
    l->len++;
}

static void list_prepend(lq_list *l, lq_task *t)
{
    t->prev = NULL;
    t->next = l->head;
    if (l->head) l->head->prev = t;
    else l->tail = t;
    l->head = t;
    l->len++;
}

static void list_remove(lq_list *l, lq_task *t)
{
    if (t->prev) t->prev->next = t->next;
    else l->head = t->next;
    if (t->next) t->next->prev = t->prev;
    else l->tail = t->prev;
    t->prev = t->next = NULL;
    l->len--;
}

static void task_free(lq_task *t)
{
    free(t->eval_id);
    free(t->code);
    free(t->language);
    free(t->engine);
    json_decref(t->priority);
    free(t->output);
    free(t->error);
    free(t->outcome);
    free(t);
}

lq *lq_new(void)
{
    lq *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->buckets = calloc(MIN_BUCKETS, sizeof(*q->buckets));
    if (!q->buckets) {
        free(q);
        return NULL;
    }
    q->nbuckets = MIN_BUCKETS;
    if (util_random(&q->seed, sizeof(q->seed)) != 0) q->seed = (uint64_t)(util_monotonic() * 1e9);
    return q;
}

void lq_free(lq *q)
{
    if (!q) return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        lq_task *t = q->buckets[i];
        while (t) {
            lq_task *next = t->hnext;
            task_free(t);
            t = next;
        }
    }
    free(q->buckets);
    free(q);
}

const char *lq_status_name(lq_status s)
{
    switch (s) {
    case LQ_QUEUED: return "queued";
    case LQ_PROCESSING: return "processing";
    case LQ_COMPLETED: return "completed";
    case LQ_FAILED: return "failed";
    case LQ_CANCELLED: return "cancelled";
    }
    return "unknown";
}

bool lq_is_finished(const lq_task *t) { return t->status >= LQ_COMPLETED; }

lq_task *lq_find(const lq *q, const char *eval_id)
{
    uint64_t h = hash_id(q, eval_id);
    for (lq_task *t = q->buckets[h & (q->nbuckets - 1)]; t; t = t->hnext)
        if (t->hash == h && strcmp(t->eval_id, eval_id) == 0) return t;
    return NULL;
}

/* Doubles the bucket array at load factor 1; on allocation failure the
 * index just gets longer chains, which stays correct. */
static void maybe_grow(lq *q)
{
    if (q->ntasks < q->nbuckets || q->nbuckets > SIZE_MAX / 2 / sizeof(lq_task *)) return;
    size_t n = q->nbuckets * 2;
    lq_task **b = calloc(n, sizeof(*b));
    if (!b) return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        lq_task *t = q->buckets[i];
        while (t) {
            lq_task *next = t->hnext;
            size_t j = t->hash & (n - 1);
            t->hnext = b[j];
            b[j] = t;
            t = next;
        }
    }
    free(q->buckets);
    q->buckets = b;
    q->nbuckets = n;
}

static void index_remove(lq *q, lq_task *t)
{
    lq_task **pp = &q->buckets[t->hash & (q->nbuckets - 1)];
    while (*pp && *pp != t) pp = &(*pp)->hnext;
    if (*pp) *pp = t->hnext;
    q->ntasks--;
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = true;
    return d;
}

/* n bytes of s (NUL bytes included) and a terminating NUL; NULL stays NULL. */
static char *dupn_or_null(const char *s, size_t n, bool *oom)
{
    if (!s) return NULL;
    char *d = malloc(n + 1);
    if (!d) {
        *oom = true;
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

lq_task *lq_push(lq *q, const char *eval_id, const char *code, size_t code_len,
                 const char *language, const char *engine, long long timeout,
                 json_t *priority, double now)
{
    bool oom = false;
    lq_task *t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->eval_id = dup_or_null(eval_id, &oom);
    t->code = malloc(code_len + 1);
    t->language = dup_or_null(language, &oom);
    t->engine = dup_or_null(engine, &oom);
    if (oom || !t->code) goto err;
    memcpy(t->code, code, code_len);
    t->code[code_len] = '\0';
    t->code_len = code_len;
    t->timeout = timeout;
    t->priority = priority ? json_incref(priority) : json_null();
    t->status = LQ_QUEUED;
    t->queued_at = now;
    t->hash = hash_id(q, eval_id);

    maybe_grow(q);
    size_t b = t->hash & (q->nbuckets - 1);
    t->hnext = q->buckets[b];
    q->buckets[b] = t;
    q->ntasks++;
    list_append(&q->fifo, t);
    return t;
err:
    task_free(t);
    return NULL;
}

lq_task *lq_take(lq *q, double now)
{
    lq_task *t = q->fifo.head;
    if (!t) return NULL;
    list_remove(&q->fifo, t);
    t->status = LQ_PROCESSING;
    t->started_at = now;
    t->token = ++q->next_token;
    q->processing++;
    return t;
}

void lq_requeue_front(lq *q, lq_task *t)
{
    if (t->status != LQ_PROCESSING) return;
    q->processing--;
    t->status = LQ_QUEUED;
    t->started_at = 0;
    t->token = ++q->next_token; /* a late reply for the old take is stale */
    list_prepend(&q->fifo, t);
}

int lq_finish(lq *q, lq_task *t, lq_status status, const lq_result *r, double now)
{
    bool oom = false;
    char *o = dupn_or_null(r->output, r->output_len, &oom);
    char *e = dupn_or_null(r->error, r->error_len, &oom);
    char *oc = dup_or_null(r->outcome, &oom);
    if (oom || lq_is_finished(t)) {
        free(o);
        free(e);
        free(oc);
        return -1;
    }
    if (t->status == LQ_QUEUED) list_remove(&q->fifo, t);
    else q->processing--;
    t->status = status;
    t->output = o;
    t->output_len = o ? r->output_len : 0;
    t->error = e;
    t->error_len = e ? r->error_len : 0;
    t->outcome = oc;
    t->has_exit_code = r->has_exit_code;
    t->exit_code = r->exit_code;
    t->duration_s = r->duration_s;
    t->completed_at = now;
    t->token = ++q->next_token;
    free(t->code);
    t->code = NULL;
    t->code_len = 0;
    list_append(&q->results, t);
    return 0;
}

size_t lq_position(const lq *q, const lq_task *t)
{
    if (t->status != LQ_QUEUED) return 0;
    const lq_task *front = q->fifo.head, *back = q->fifo.tail;
    for (size_t k = 0; front && back; k++, front = front->next, back = back->prev) {
        if (front == t) return k + 1;
        if (back == t) return q->fifo.len - k;
    }
    return 0;
}

size_t lq_prune(lq *q, double cutoff)
{
    size_t n = 0;
    while (q->results.head && q->results.head->completed_at < cutoff) {
        lq_task *t = q->results.head;
        list_remove(&q->results, t);
        index_remove(q, t);
        task_free(t);
        n++;
    }
    return n;
}

lq_counts lq_get_counts(const lq *q)
{
    lq_counts c = {q->fifo.len, q->processing, q->results.len, q->ntasks};
    return c;
}
