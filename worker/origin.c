#include "origin.h"

#include <string.h>
#include <strings.h>

static int match(const char *pat, size_t pl, const char *o, size_t ol) {
  const char *star = memchr(pat, '*', pl);
  if (!star) return pl == ol && strncasecmp(pat, o, pl) == 0;
  // "scheme://*.rest": the origin must be "scheme://<label(s)>.rest"
  size_t pre = (size_t)(star - pat);
  if (pl < pre + 2 || star[1] != '.') return 0;
  const char *suf = star + 1; /* ".example.com" */
  size_t sl = pl - pre - 1;
  if (ol <= pre + sl) return 0; /* at least one character before the suffix */
  if (strncasecmp(pat, o, pre) != 0) return 0;
  if (strncasecmp(suf, o + ol - sl, sl) != 0) return 0;
  /* the part the star stands for: a host prefix, no port or path characters */
  for (size_t i = pre; i < ol - sl; i++) {
    char ch = o[i];
    if (ch == '/' || ch == ':' || ch == '@' || ch == '?' || ch == '#') return 0;
  }
  return 1;
}

int origin_allowed(const char *list, const char *origin, size_t len) {
  if (!list || !*list) return 1;
  const char *p = list;
  while (*p) {
    while (*p == ' ' || *p == ',') p++;
    const char *e = p;
    while (*e && *e != ',') e++;
    size_t n = (size_t)(e - p);
    while (n && p[n - 1] == ' ') n--;
    if (n && match(p, n, origin, len)) return 1;
    p = e;
  }
  return 0;
}
