/* pconfig — turnout-proxy settings: the one table of environment variables. */
#ifndef TURNOUT_PCONFIG_H
#define TURNOUT_PCONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cfg.h"
#include "gates.h"

#define ROLLOUT_MAX_STEPS 20

typedef struct proxy_settings {
    char *listen;
    bool celery_enabled;
    double celery_percentage;
    bool force_legacy;
    char *routing_mode;      /* sticky | random */
    char *rollout_salt;
    bool fallback_to_legacy;
    char *broker_url;
    char *result_backend;    /* empty = broker_url */
    char *queue;
    char *task_name;
    char *legacy_backend;    /* http | rq */
    char *legacy_url;
    char *legacy_rq_url, *legacy_rq_queues, *legacy_rq_function, *legacy_rq_serializer;
    long long legacy_rq_result_ttl_s;
    char *upstream_url;
    char *admin_token;
    char *read_token;       /* or admin_token: DLQ args and shadow outputs */
    char *allowed_hosts;    /* xsite.h: empty = any */
    char *allowed_origins;  /* xsite.h: besides the proxy's own */
    long long max_body_bytes;
    char *allowed_languages;
    char *log_level;
    char *log_format;
    char *tls_cert;
    char *tls_key;
    long long legacy_timeout_ms;
    long long legacy_max_reply_bytes;
    long long upstream_timeout_ms;
    long long passthrough_buffer_bytes;
    char *trust_forwarded_text;
    unsigned trust_forwarded; /* FWD_* bits, from trust_forwarded_text */
    bool forwarded_header;
    long long websocket_idle_timeout_s;
    char *auth_url, *auth_response_headers, *auth_sticky_header;
    long long auth_timeout_ms, auth_cache_ttl_s;
    long long redis_timeout_ms;
    long long shutdown_grace_s;
    long long client_timeout_s;
    long long client_request_timeout_s;
    long long max_client_connections;
    long long max_in_flight;
    char *env_file;
    long long route_record_ttl_s;
    long long route_pending_max;
    bool accept_unchecked_eval_ids;
    long long queue_max_depth;
    long long completion_poll_s;
    long long completion_poll_batch;
    char *admin_token_label;
    char *rollout_steps_text;
    double rollout_steps[ROLLOUT_MAX_STEPS];
    int rollout_nsteps;
    long long rollout_step_interval_s;
    double gate_alpha;
    long long gate_min_samples;
    double gate_margin[GATE_COUNT], gate_pass_margin[GATE_COUNT];
    double gate_latency_quantile;
    char *rollout_rollback_to; /* zero | last_good */
    double shadow_percentage;
    long long shadow_mismatches_kept;
} proxy_settings;

/* Client-sent forwarding headers the pass-through keeps (TRUST_FORWARDED_HEADERS). */
#define FWD_XFF 1u
#define FWD_XFHOST 2u
#define FWD_XFPROTO 4u
#define FWD_FORWARDED 8u
#define FWD_ALL 15u

extern const cfg_option pconfig_table[];
extern const size_t pconfig_count;

/* Loads and cross-validates the settings; returns the number of problems
 * (each written as one line into errs).  On 0, *s holds the new settings. */
int pconfig_load(proxy_settings *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
    __attribute__((warn_unused_result));
/* pconfig_load over the environment with the TURNOUT_ENV_FILE `env_file`
 * over it (NULL or "": none); a misspelt name in the file is a problem. */
int pconfig_read(proxy_settings *s, const char *env_file, char *errs, size_t errs_size)
    __attribute__((warn_unused_result));
void pconfig_free(proxy_settings *s);

/* A TLS server context from PEM files, TLS 1.2 and 1.3 only; NULL with a
 * line naming the variable at fault. */
typedef struct ssl_ctx_st SSL_CTX;
SSL_CTX *pconfig_tls_context(const char *cert, const char *key, char *err, size_t n);

/* True when `lang` is one of the comma-separated allowed languages. */
bool pconfig_language_allowed(const proxy_settings *s, const char *lang, size_t len);

#endif
