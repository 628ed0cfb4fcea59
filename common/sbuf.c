#include "sbuf.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct sbuf *sbuf_new(size_t cap) {
  struct sbuf *b = malloc(sizeof(*b) + cap);
  if (!b) return NULL;
  b->refs = 1;
  b->born_us = 0;
  b->len = 0;
  b->cap = cap;
  return b;
}

struct sbuf *sbuf_copy(const void *data, size_t len) {
  struct sbuf *b = sbuf_new(len);
  if (!b) return NULL;
  memcpy(b->data, data, len);
  b->len = len;
  return b;
}

void sbuf_unref(struct sbuf *b) {
  if (!b) return;
  assert(b->refs > 0 && b->len <= b->cap);
  if (--b->refs == 0) free(b);
}
