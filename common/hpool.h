/* hpool — HTTP/1.1 client with a keep-alive connection pool, on a libevent
 * base, for plain http:// to an IP address (the case of every backend on a
 * private network: the legacy Queue Service, executors, storage, the
 * upstream API).  httpc uses it for those URLs and libcurl for the rest
 * (https, host names, a configured http_proxy); callers see one API.
 *
 * Why not libcurl for everything: per transfer, curl re-parses the URL and
 * options, allocates, and adds and removes its socket from epoll; for a small
 * request on loopback that was more CPU than the proxy's own work.  Here a
 * pooled connection keeps its read event armed for its whole life, a request
 * is written with one send(), and a response is parsed in place.
 *
 * Every started request completes exactly once through its callback (with
 * the httpc_response of httpc.h), never from inside hpool_start, unless it is
 * cancelled first.  A request that fails on a reused connection before any
 * byte of the response arrived is retried once on a new connection when its
 * method is idempotent (RFC 9110 §9.2.2): the server may have closed the idle
 * connection as the request went out. */
#ifndef TURNOUT_HPOOL_H
#define TURNOUT_HPOOL_H

#include <stdbool.h>
#include <stddef.h>

#include <sys/socket.h>

#include "httpc.h"

struct event_base;

typedef struct hpool hpool;
typedef struct hpool_req hpool_req;

#define HPOOL_MAX_IDLE_PER_ORIGIN 64 /* idle connections kept per host:port */
#define HPOOL_IDLE_TIMEOUT_MS 30000  /* an idle connection is closed after this */
#define HPOOL_MAX_HEADER_BYTES 65536 /* response status line + headers */
#define HPOOL_MAX_HEADERS 256        /* response header lines */
#define HPOOL_MAX_AUTHORITY 80       /* "[v6 address]:port" fits in 54 */

/* New pool on `base`; NULL when out of memory. */
hpool *hpool_new(struct event_base *base);

/* Closes every connection.  Requests still in flight are dropped without
 * their callbacks (cancel them first).  Safe from inside a callback: the
 * pool is then freed when that callback returns. */
void hpool_free(hpool *p);

/* True when hpool can carry this URL: "http://" + IPv4 address or bracketed
 * IPv6 address, optional port, path; no user info, no fragment, no control
 * characters or spaces. */
bool hpool_handles(const char *url);

/* The address and authority (host[:port], the Host header) of a URL
 * hpool carries (see hpool_handles); false for any other. */
bool hpool_address(const char *url, char authority[HPOOL_MAX_AUTHORITY], struct sockaddr_storage *ss,
                   socklen_t *len);

/* Starts a request.  max_body is the response body limit.  NULL when it
 * does not start, and the callback is then never called: with *declined
 * set (when declined is not NULL) if the URL is not one hpool carries (see
 * hpool_handles; the caller takes it elsewhere), else with err filled (out
 * of memory, bad header). */
hpool_req *hpool_start(hpool *p, const httpc_opts *o, size_t max_body, httpc_done_cb cb, void *arg,
                       bool *declined, char err[256]);

/* Aborts an in-flight request; its callback is not called.  Not from inside
 * that request's own callback. */
void hpool_cancel(hpool_req *r);

/* A streamed request (httpc_opts.stream) paused by its callbacks reads
 * again; the callbacks run from the loop, not from inside this call. */
void hpool_resume(hpool_req *r);

/* Connections open (idle + busy), for tests and metrics. */
size_t hpool_connections(const hpool *p);

#endif
