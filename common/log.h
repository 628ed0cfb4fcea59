/* log.h - leveled, one-line-per-event logging to stderr.
 *
 * Every line carries an ISO-8601 UTC time, the level, the pid and the role
 * ("master" or "worker N").  Nothing here allocates; lines longer than
 * LOG_LINE_MAX are truncated.  The level is process-global and set once at
 * start-up from the configuration.
 */
#ifndef TIDINGS_LOG_H
#define TIDINGS_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_LINE_MAX 1024

/* Returns 0 and sets *out, or -1 for an unknown name. */
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level lvl);

void log_set_level(enum log_level lvl);
/* role is copied; at most 31 bytes are kept. */
void log_set_role(const char *role);
int log_enabled(enum log_level lvl);

void log_msg(enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
