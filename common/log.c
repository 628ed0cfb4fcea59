#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level current_level = LOG_INFO;
static char role[32] = "master";
static int worker_id = 0;
static int json_format = 0;
static unsigned long dropped = 0;

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

const char *log_level_name(enum log_level lvl) { return (unsigned)lvl < 4 ? names[lvl] : "?"; }

void log_set_level(enum log_level lvl) { current_level = lvl; }
void log_set_role(const char *r) { snprintf(role, sizeof(role), "%s", r); }
void log_set_worker(int id) { worker_id = id; }
void log_set_json(int json) { json_format = json; }

void log_nonblocking(void) {
  int fl = fcntl(STDERR_FILENO, F_GETFL);
  if (fl >= 0) fcntl(STDERR_FILENO, F_SETFL, fl | O_NONBLOCK);
}

int log_enabled(enum log_level lvl) { return lvl >= current_level; }

/* Appends s as a JSON string body (without quotes). */
static size_t json_escape(char *out, size_t room, const char *s, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < n && o + 7 < room; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c < 0x20) {
      o += (size_t)snprintf(out + o, room - o, "\\u%04x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  return o;
}

static int is_number(const char *s, size_t n) {
  if (n == 0 || n > 18) return 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return 0;
  return 1;
}

/* The message's key=value words become fields of their own. */
static size_t json_fields(char *out, size_t room, const char *msg) {
  size_t o = 0;
  const char *p = msg;
  while (*p) {
    while (*p == ' ' || *p == ',' || *p == ';' || *p == ':') p++;
    const char *w = p;
    while (*p && *p != ' ') p++;
    const char *eq = memchr(w, '=', (size_t)(p - w));
    if (!eq || eq == w) continue;
    size_t kl = (size_t)(eq - w);
    int ok = 1;
    for (size_t i = 0; i < kl; i++)
      if (!((w[i] >= 'a' && w[i] <= 'z') || w[i] == '_' || w[i] == '-')) ok = 0;
    if (!ok || kl > 32 || o + kl + 16 >= room) continue;
    const char *v = eq + 1;
    size_t vl = (size_t)(p - v);
    while (vl && (v[vl - 1] == ',' || v[vl - 1] == ':' || v[vl - 1] == ';')) vl--;
    o += (size_t)snprintf(out + o, room - o, ",\"%.*s\":", (int)kl, w);
    for (size_t i = 0; i < kl; i++)
      if (out[o - 3 - kl + i + 1] == '-') out[o - 3 - kl + i + 1] = '_';
    if (is_number(v, vl)) {
      o += (size_t)snprintf(out + o, room - o, "%.*s", (int)vl, v);
    } else if (o + 2 < room) {
      out[o++] = '"';
      o += json_escape(out + o, room - o - 2, v, vl);
      out[o++] = '"';
    }
  }
  return o;
}

void log_msg(enum log_level lvl, const char *event, const char *fmt, ...) {
  if (!log_enabled(lvl)) return;
  char msg[LOG_LINE_MAX], line[LOG_LINE_MAX * 2];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  char ts[96];
  snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t len;
  if (json_format) {
    len = (size_t)snprintf(line, sizeof(line),
                           "{\"time\":\"%s\",\"level\":\"%s\",\"pid\":%d,\"worker\":%d,"
                           "\"event\":\"%s\",\"msg\":\"",
                           ts, log_level_name(lvl), (int)getpid(), worker_id, event);
    len += json_escape(line + len, sizeof(line) - len - 64, msg, strlen(msg));
    line[len++] = '"';
    len += json_fields(line + len, sizeof(line) - len - 48, msg);
    if (dropped)
      len += (size_t)snprintf(line + len, sizeof(line) - len, ",\"log_dropped\":%lu", dropped);
    line[len++] = '}';
  } else {
    len = (size_t)snprintf(line, sizeof(line), "%s %-5s [%d] %s: %s", ts, log_level_name(lvl),
                           (int)getpid(), role, msg);
    if (len > sizeof(line) - 64) len = sizeof(line) - 64;
    if (dropped)
      len += (size_t)snprintf(line + len, 64, " (%lu log lines dropped before)", dropped);
  }
  line[len++] = '\n';
  /* one write(2) per line so lines of several processes never interleave */
  ssize_t w = write(STDERR_FILENO, line, len);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) dropped++;
  else dropped = 0;
}
