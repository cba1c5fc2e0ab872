/* log — one line per event, logfmt or JSON, to stderr.
 *
 * LOG_INFO("submitted", "eval_id", id, "path", "new");
 * Arguments after the message are key/value string pairs (NULL values are
 * skipped).  Formatting is skipped entirely below the threshold.  Never call
 * from a signal handler. */
#ifndef TURNOUT_LOG_H
#define TURNOUT_LOG_H

#include <stdbool.h>

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

extern int log_threshold;

/* level: "debug|info|warn|error"; format: "logfmt|json"; returns -1 if bad. */
int log_setup(const char *level, const char *format, const char *program);

void log_emit(int level, const char *msg, ...); /* pairs, NULL-terminated by the macros */

#define LOG_AT(lvl, msg, ...)                                               \
    do {                                                                    \
        if ((lvl) >= log_threshold) log_emit((lvl), (msg), ##__VA_ARGS__, (const char *)0); \
    } while (0)
#define LOG_DEBUG(msg, ...) LOG_AT(LOG_LVL_DEBUG, msg, ##__VA_ARGS__)
#define LOG_INFO(msg, ...)  LOG_AT(LOG_LVL_INFO, msg, ##__VA_ARGS__)
#define LOG_WARN(msg, ...)  LOG_AT(LOG_LVL_WARN, msg, ##__VA_ARGS__)
#define LOG_ERROR(msg, ...) LOG_AT(LOG_LVL_ERROR, msg, ##__VA_ARGS__)

#endif
