#include "outq.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define OUTQ_COPY_MIN 512

static int grow(struct outq *q) {
  uint32_t ncap = q->cap ? q->cap * 2 : 8;
  struct outq_entry *r = malloc(ncap * sizeof(*r));
  if (!r) return -1;
  for (uint32_t i = 0; i < q->count; i++) r[i] = q->ring[(q->head + i) & (q->cap - 1)];
  free(q->ring);
  q->ring = r;
  q->cap = ncap;
  q->head = 0;
  return 0;
}

static struct outq_entry *at(const struct outq *q, uint32_t i) {
  return &q->ring[(q->head + i) & (q->cap - 1)];
}

int outq_push_ref(struct outq *q, struct sbuf *b) {
  if (b->len == 0) return 0; /* an empty entry would never be consumed */
  if (q->count == q->cap && grow(q) < 0) return -1;
  assert(q->count < q->cap && (q->cap & (q->cap - 1)) == 0);
  struct outq_entry *e = at(q, q->count++);
  e->buf = sbuf_ref(b);
  e->off = 0;
  q->bytes += b->len;
  return 0;
}

int outq_push_copy(struct outq *q, const void *data, size_t len, uint32_t nlocked) {
  if (len == 0) return 0; /* an empty entry would never be consumed */
  if (q->count > nlocked) {
    struct outq_entry *last = at(q, q->count - 1);
    struct sbuf *b = last->buf;
    if (b->refs == 1 && b->cap - b->len >= len) {
      memcpy(b->data + b->len, data, len);
      b->len += len;
      q->bytes += len;
      return 0;
    }
  }
  struct sbuf *b = sbuf_new(len > OUTQ_COPY_MIN ? len : OUTQ_COPY_MIN);
  if (!b) return -1;
  memcpy(b->data, data, len);
  b->len = len;
  int rc = outq_push_ref(q, b);
  sbuf_unref(b);
  return rc;
}

int outq_iov(const struct outq *q, uint32_t skip, struct iovec *iov, int max) {
  int n = 0;
  for (uint32_t i = skip; i < q->count && n < max; i++) {
    const struct outq_entry *e = at(q, i);
    iov[n].iov_base = e->buf->data + e->off;
    iov[n].iov_len = e->buf->len - e->off;
    n++;
  }
  return n;
}

void outq_consume(struct outq *q, size_t n) { outq_consume_cb(q, n, NULL, NULL); }

void outq_consume_cb(struct outq *q, size_t n, void (*done)(void *arg, const struct sbuf *b),
                     void *arg) {
  assert(n <= q->bytes); /* the kernel took no more than was queued */
  q->bytes -= n;
  while (n > 0 && q->count > 0) {
    struct outq_entry *e = at(q, 0);
    size_t left = e->buf->len - e->off;
    if (n < left) {
      e->off += n;
      return;
    }
    n -= left;
    if (done) done(arg, e->buf);
    sbuf_unref(e->buf);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
  }
}

void outq_clear(struct outq *q) {
  for (uint32_t i = 0; i < q->count; i++) sbuf_unref(at(q, i)->buf);
  free(q->ring);
  memset(q, 0, sizeof(*q));
}

void outq_trim(struct outq *q) {
  if (q->count == 0 && q->ring) {
    free(q->ring);
    q->ring = NULL;
    q->cap = 0;
    q->head = 0;
  }
}

void outq_truncate(struct outq *q, uint32_t keep) {
  while (q->count > keep) {
    struct outq_entry *e = at(q, q->count - 1);
    q->bytes -= e->buf->len - e->off;
    sbuf_unref(e->buf);
    q->count--;
  }
}
