/* The Redis function library "tidings" (history_lib.h): the template
 * redis/history.lua, embedded by the Makefile as embed_redis_history_lua,
 * with its placeholders replaced.
 *
 * Each placeholder is an identifier __NAME__ of the template, replaced in
 * one pass (a replacement is never scanned again, so a prefix that reads
 * like a placeholder stays as it is).  The prefix goes between the quotes
 * of a Lua string literal: letters, digits and " _-:./@" as they are, every
 * other byte as a three-digit decimal escape \ddd, so that no prefix can end
 * the literal or change what the library does.
 */
#include "history_lib.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

/* made from redis/history.lua by the Makefile's embed rule */
extern const unsigned char embed_redis_history_lua[];
extern const size_t embed_redis_history_lua_len;

enum { PH_PREFIX, PH_MAXLEN, PH_TTL, PH_PUBLISH, PH_COUNT };
static const char *const placeholders[PH_COUNT] = {"__PREFIX__", "__MAXLEN__", "__TTL__",
                                                   "__PUBLISH__"};

/* Output that counts everything and stores what fits in out[0..cap). */
struct sink {
  char *out;
  size_t cap, len;
};

static void put(struct sink *s, const char *p, size_t n) {
  if (s->len < s->cap) {
    size_t room = s->cap - s->len;
    memcpy(s->out + s->len, p, n < room ? n : room);
  }
  s->len += n;
}

static int prefix_char_plain(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' ||
         c == '_' || c == '-' || c == ':' || c == '.' || c == '/' || c == '@';
}

static void put_prefix(struct sink *s, const char *prefix) {
  for (const unsigned char *p = (const unsigned char *)prefix; *p; p++) {
    if (prefix_char_plain(*p)) {
      put(s, (const char *)p, 1);
    } else {
      char esc[5];
      snprintf(esc, sizeof esc, "\\%03u", (unsigned)*p);
      put(s, esc, 4);
    }
  }
}

static void put_uint(struct sink *s, unsigned v) {
  char num[16];
  int n = snprintf(num, sizeof num, "%u", v);
  put(s, num, (size_t)n);
}

/* Renders the template into s; returns 0, or -1 if a placeholder is missing
 * from the template (it would silently keep its default otherwise). */
static int render(struct sink *s, const char *prefix, unsigned maxlen, unsigned ttl, int sharded) {
  const char *t = (const char *)embed_redis_history_lua;
  const char *end = t + embed_redis_history_lua_len;
  int seen[PH_COUNT] = {0};
  const char *lit = t; /* start of the text not yet copied */
  while (t < end) {
    int ph = -1;
    if (t[0] == '_' && end - t >= 2 && t[1] == '_') {
      for (int i = 0; i < PH_COUNT; i++) {
        size_t n = strlen(placeholders[i]);
        if ((size_t)(end - t) >= n && memcmp(t, placeholders[i], n) == 0) ph = i;
      }
    }
    if (ph < 0) {
      t++;
      continue;
    }
    put(s, lit, (size_t)(t - lit));
    if (ph == PH_PREFIX) put_prefix(s, prefix);
    else if (ph == PH_PUBLISH) put(s, sharded ? "SPUBLISH" : "PUBLISH", sharded ? 8 : 7);
    else put_uint(s, ph == PH_MAXLEN ? maxlen : ttl);
    seen[ph]++;
    t += strlen(placeholders[ph]);
    lit = t;
  }
  put(s, lit, (size_t)(end - lit));
  for (int i = 0; i < PH_COUNT; i++)
    if (!seen[i]) return -1;
  return 0;
}

static int prefix_valid(const char *prefix) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)prefix; *p; p++, n++)
    if (*p < 0x20 || *p > 0x7e || n >= HISTORY_LIB_PREFIX_MAX) return 0;
  return 1;
}

int history_lib_source(char *out, size_t outlen, const char *prefix, unsigned maxlen, unsigned ttl,
                       int sharded) {
  if (out && outlen) out[0] = '\0';
  if (!out || !prefix || maxlen == 0 || ttl == 0 || !prefix_valid(prefix)) return -1;
  struct sink s = {out, outlen, 0};
  if (render(&s, prefix, maxlen, ttl, sharded) < 0 || s.len >= outlen || s.len > INT_MAX) {
    out[0] = '\0';
    return -1;
  }
  out[s.len] = '\0';
  return (int)s.len;
}

size_t history_lib_source_bound(void) {
  /* the longest prefix, every byte escaped, and the widest numbers */
  char worst[HISTORY_LIB_PREFIX_MAX + 1];
  memset(worst, '"', HISTORY_LIB_PREFIX_MAX);
  worst[HISTORY_LIB_PREFIX_MAX] = '\0';
  struct sink s = {NULL, 0, 0};
  render(&s, worst, UINT_MAX, UINT_MAX, 1);
  return s.len + 1;
}
