#include "utf8.h"

/* Walks one character at a time; the ranges of the second byte follow the
 * table of RFC 3629 section 4, which rules out overlong forms and
 * surrogates without decoding the code point. */
size_t utf8_valid_prefix(const uint8_t *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c == 0xE0) {
      n = 2;
      lo = 0xA0;
    } else if (c >= 0xE1 && c <= 0xEC) n = 2;
    else if (c == 0xED) {
      n = 2;
      hi = 0x9F;
    } else if (c >= 0xEE && c <= 0xEF) n = 2;
    else if (c == 0xF0) {
      n = 3;
      lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) n = 3;
    else if (c == 0xF4) {
      n = 3;
      hi = 0x8F;
    } else return i;
    if (i + n >= len) return i; /* truncated */
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k <= n; k++)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += n + 1;
  }
  return i;
}

int utf8_valid(const uint8_t *s, size_t len) { return utf8_valid_prefix(s, len) == len; }
