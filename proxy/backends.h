/* backends — which legacy backend LEGACY_BACKEND names, built from the
 * proxy's settings.  Adding a backend is its file in proxy/backend/, one
 * row in this module's table and its name in LEGACY_BACKEND's values
 * (pconfig.c); README "Writing a backend". */
#ifndef TURNOUT_BACKENDS_H
#define TURNOUT_BACKENDS_H

#include "httpc.h"
#include "backend.h"
#include "pconfig.h"

struct event_base;

/* The backend cfg->legacy_backend names, on `base` (the shared HTTP client
 * `hc` for those that speak HTTP); borrowed settings must outlive it.
 * NULL with err (unknown name, out of memory, bad URL). */
backend *backends_legacy_new(const proxy_settings *cfg, struct event_base *base, httpc *hc, char err[256]);

#endif
