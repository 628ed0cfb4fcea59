#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level current_level = LOG_INFO;
static char role[32] = "master";

static const char *const names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *name, enum log_level *out) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(name, names[i]) == 0) {
      *out = (enum log_level)i;
      return 0;
    }
  }
  if (strcasecmp(name, "warning") == 0) {
    *out = LOG_WARN;
    return 0;
  }
  return -1;
}

const char *log_level_name(enum log_level lvl) {
  return (unsigned)lvl < 4 ? names[lvl] : "?";
}

void log_set_level(enum log_level lvl) { current_level = lvl; }

void log_set_role(const char *r) { snprintf(role, sizeof(role), "%s", r); }

int log_enabled(enum log_level lvl) { return lvl >= current_level; }

void log_msg(enum log_level lvl, const char *fmt, ...) {
  if (!log_enabled(lvl)) return;
  char line[LOG_LINE_MAX];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof(line),
                   "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s [%d] %s: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                   log_level_name(lvl), (int)getpid(), role);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof(line) - 2) len = sizeof(line) - 2;
  line[len++] = '\n';
  /* One write(2) per line so lines from several processes never interleave. */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}
