#include "backends.h"

#include <stdio.h>
#include <string.h>

#include "legacy_http.h"
#include "legacy_rq.h"

static backend *make_http(const proxy_settings *cfg, struct event_base *base, httpc *hc, char err[256])
{
    (void)base;
    backend *b = legacy_http_new(hc, cfg->legacy_url, (long)cfg->legacy_timeout_ms,
                                        (size_t)cfg->legacy_max_reply_bytes);
    if (!b) snprintf(err, 256, "out of memory");
    return b;
}

static backend *make_rq(const proxy_settings *cfg, struct event_base *base, httpc *hc, char err[256])
{
    (void)hc;
    legacy_rq_opts o = {.url = cfg->legacy_rq_url,
                        .queues = cfg->legacy_rq_queues,
                        .function = cfg->legacy_rq_function,
                        .pickle = strcmp(cfg->legacy_rq_serializer, "pickle") == 0,
                        .result_ttl_s = cfg->legacy_rq_result_ttl_s,
                        .timeout_ms = (long)cfg->legacy_timeout_ms,
                        .max_result_bytes = (size_t)cfg->legacy_max_reply_bytes};
    return legacy_rq_new(base, &o, err);
}

static const struct {
    const char *name; /* LEGACY_BACKEND's value */
    backend *(*make)(const proxy_settings *cfg, struct event_base *base, httpc *hc, char err[256]);
} legacy_backends[] = {
    {"http", make_http},
    {"rq", make_rq},
};

backend *backends_legacy_new(const proxy_settings *cfg, struct event_base *base, httpc *hc, char err[256])
{
    for (size_t i = 0; i < sizeof(legacy_backends) / sizeof(legacy_backends[0]); i++)
        if (strcmp(legacy_backends[i].name, cfg->legacy_backend) == 0) return legacy_backends[i].make(cfg, base, hc, err);
    snprintf(err, 256, "LEGACY_BACKEND=\"%.100s\" names no backend this proxy has", cfg->legacy_backend);
    return NULL;
}
