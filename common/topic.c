#include "topic.h"

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
