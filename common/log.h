/* log.h - leveled, one-line-per-event logging to stderr.
 *
 * Every event has a stable name (worker_exit, redis_lost, ...) and a human
 * message.  Text format:  <time> <level> [<pid>] <role>: <message>
 * JSON format (--log-format json), one object per line:
 *   {"time":"2026-...Z","level":"info","pid":12,"worker":1,"event":"redis_lost",
 *    "msg":"...", <fields>}
 * where "worker" is 0 for the master and <fields> are the message's
 * key=value words (conn=7 peer=1.2.3.4:5 ...), numbers as numbers.
 *
 * Nothing here allocates; lines longer than LOG_LINE_MAX are truncated.  A
 * line is one write(2); when stderr is a full non-blocking pipe the line is
 * dropped (and counted in the next line that goes out) rather than
 * blocking the event loop.  Level and format are process-global and set
 * once at start-up.
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

/* 0 = text, 1 = JSON */
void log_set_json(int json);
/* Makes stderr non-blocking (workers: never block the loop on a log line). */
void log_nonblocking(void);
void log_set_worker(int id);

void log_msg(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...)                                           \
  do {                                                           \
    if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); \
  } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
