#include "redisaddr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int copy(char *dst, size_t cap, const char *s, size_t n) {
  if (n >= cap) return -1;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 0;
}

/* s quoted in an error message: credentials (up to the last '@') hidden,
 * line breaks turned into spaces. */
static void quote(const char *s, char *out, size_t outlen) {
  const char *at = strrchr(s, '@'), *sl = strstr(s, "//");
  if (!at) snprintf(out, outlen, "%s", s);
  else if (sl && sl < at) snprintf(out, outlen, "%.*s***%s", (int)(sl + 2 - s), s, at);
  else snprintf(out, outlen, "***%s", at);
  for (char *p = out; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
}

int redis_addr_parse(const char *s, struct redis_addr *a, char *err, size_t errlen) {
  memset(a, 0, sizeof(*a));
  a->port = 6379;
  if (strncmp(s, "unix:", 5) == 0) {
    a->is_unix = 1;
    const char *p = s + 5;
    if (*p != '/' || copy(a->path, sizeof(a->path), p, strlen(p)) < 0) {
      snprintf(err, errlen, "--redis unix: needs an absolute socket path under 108 bytes");
      return -1;
    }
    return 0;
  }
  char q[256];
  if (strncmp(s, "redis://", 8) != 0) {
    quote(s, q, sizeof(q));
    snprintf(err, errlen,
             "--redis must be redis://[:password@]host:port[/db] or unix:/path, got '%s'", q);
    return -1;
  }
  const char *p = s + 8;
  const char *at = strrchr(p, '@');
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) {
      snprintf(err, errlen, "--redis: credentials must be [user]:password@");
      return -1;
    }
    if (copy(a->user, sizeof(a->user), p, (size_t)(colon - p)) < 0 ||
        copy(a->password, sizeof(a->password), colon + 1, (size_t)(at - colon - 1)) < 0) {
      snprintf(err, errlen, "--redis: user or password too long");
      return -1;
    }
    p = at + 1;
  }
  const char *slash = strchr(p, '/');
  const char *hend = slash ? slash : p + strlen(p);
  const char *portp = NULL;
  if (*p == '[') { /* [ipv6]:port */
    const char *rb = memchr(p, ']', (size_t)(hend - p));
    if (!rb) goto bad;
    if (copy(a->host, sizeof(a->host), p + 1, (size_t)(rb - p - 1)) < 0) goto bad;
    if (rb + 1 < hend) {
      if (rb[1] != ':') goto bad;
      portp = rb + 2;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(hend - p));
    if (copy(a->host, sizeof(a->host), p, (size_t)((colon ? colon : hend) - p)) < 0) goto bad;
    if (colon) portp = colon + 1;
  }
  if (!a->host[0]) goto bad;
  if (portp) {
    char *end;
    long port = strtol(portp, &end, 10);
    if (end != hend || port < 1 || port > 65535) goto bad;
    a->port = (int)port;
  }
  if (slash && slash[1]) {
    char *end;
    long db = strtol(slash + 1, &end, 10);
    if (*end || db < 0 || db > 1000000) goto bad;
    a->db = (int)db;
  }
  return 0;
bad:
  quote(s, q, sizeof(q));
  snprintf(err, errlen, "--redis: cannot parse '%s' (expected redis://[:password@]host:port[/db])",
           q);
  return -1;
}

void redis_addr_describe(const struct redis_addr *a, char *out, size_t outlen) {
  if (a->is_unix) snprintf(out, outlen, "unix:%s", a->path);
  else
    snprintf(out, outlen, "%s:%d/%d%s", a->host, a->port, a->db, a->password[0] ? " (auth)" : "");
}
