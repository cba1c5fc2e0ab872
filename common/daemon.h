/* daemon — the main() the four turnout binaries share, once: the command
 * line (--help, --version, --check-config), the settings read and
 * reported, logging, SIGPIPE ignored, one event base, SIGTERM and SIGINT
 * to stop, SIGHUP to reload (ignored until the program has started), the
 * loop, and the teardown.  A program gives its hooks; `self` is its state,
 * holding its settings. */
#ifndef TURNOUT_DAEMON_H
#define TURNOUT_DAEMON_H

#include <stddef.h>

#include <event2/event.h>

#include "cfg.h"

typedef struct daemon_prog {
    const char *name;    /* "turnout-proxy" */
    const char *summary; /* one line for --help */
    const cfg_option *options;
    size_t noptions;
    /* Reads the settings into self: the number of problems, described in
     * errs (one per line). */
    int (*read)(void *self, char *errs, size_t errs_size);
    /* The settings' LOG_LEVEL and LOG_FORMAT. */
    void (*log_names)(const void *self, const char **level, const char **format);
    /* Builds the program on `base` and starts serving: 0, or the exit code
     * (1: could not start, 2: bad settings) with err naming why. */
    int (*start)(void *self, struct event_base *base, char err[256]);
    /* Signal handlers, run from the loop with self: stop (SIGTERM, SIGINT:
     * drain, then leave the loop) and reload (SIGHUP). */
    event_callback_fn stop, reload;
    /* Frees what read and start built (either may not have run fully);
     * never the event base. */
    void (*teardown)(void *self);
} daemon_prog;

/* Runs the program: its exit code (0 after a clean stop). */
int daemon_main(int argc, char **argv, const daemon_prog *prog, void *self);

#endif
