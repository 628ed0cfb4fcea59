#include "topic.h"

#include <string.h>

#include "config.h"

int topic_validate(const char *name, size_t len) {
  if (len == 0) return TOPIC_EEMPTY;
  if (len > TOPIC_MAX_LEN) return TOPIC_ETOOLONG;
  if (name[0] == '.') return TOPIC_ECHAR;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '@';
    if (!ok) return TOPIC_ECHAR;
    if (c == '.' && i > 0 && name[i - 1] == '.') return TOPIC_ECHAR;
  }
  return 0;
}

int topic_match(const char *pattern, size_t plen, const char *topic, size_t tlen) {
  if (plen == 0) return 0;
  if (pattern[plen - 1] == '*') return tlen >= plen - 1 && memcmp(topic, pattern, plen - 1) == 0;
  return tlen == plen && memcmp(topic, pattern, plen) == 0;
}

int topic_match_list(const char *list, const char *topic, size_t tlen) {
  const char *p = list;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    const char *q = p;
    size_t m = n;
    while (m && *q == ' ') q++, m--;
    while (m && q[m - 1] == ' ') m--;
    if (topic_match(q, m, topic, tlen)) return 1;
    if (!end) break;
    p = end + 1;
  }
  return 0;
}
