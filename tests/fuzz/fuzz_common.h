/* fuzz_common.h - helpers shared by the libFuzzer harnesses.
 *
 * FUZZ_CHECK aborts with a message when an invariant fails, so libFuzzer
 * records the input as a crash.  fuzz_dup() copies the input into a heap
 * block of exactly its length, so AddressSanitizer reports any read past the
 * end (libFuzzer's own buffer is also exact, but callers often need a copy
 * of a sub-range). */
#ifndef TIDINGS_FUZZ_COMMON_H
#define TIDINGS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                           \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                     \
    }                                                                              \
  } while (0)

/* A heap copy of data[0..size) in a block of exactly size bytes (one byte
 * when size is 0, never read). */
static inline void *fuzz_dup(const void *data, size_t size) {
  void *p = malloc(size ? size : 1);
  if (!p) abort();
  if (size) memcpy(p, data, size);
  return p;
}

/* An independent UTF-8 decoder (RFC 3629) used as the reference for
 * common/utf8.c: returns the length of the longest prefix of whole valid
 * characters. */
static inline size_t ref_utf8_prefix(const uint8_t *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    uint32_t cp;
    size_t n;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4, cp = c & 0x07;
    } else {
      return i;
    }
    if (len - i < n) return i;
    for (size_t k = 1; k < n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n;
  }
  return i;
}

/* 64-bit FNV-1a, to compare message contents cheaply. */
static inline uint64_t fuzz_hash(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

#endif
