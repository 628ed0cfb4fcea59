/* outq.h - a connection's queue of outgoing bytes.
 *
 * A ring of (sbuf, offset) entries: each entry holds one reference to a
 * shared buffer (a broadcast frame that many queues point to) or to a
 * buffer of this queue's own (replies and control frames, coalesced).
 * The ring's array is allocated on first use and released by
 * outq_trim() when the queue is empty, so an idle connection holds no
 * queue memory.  No I/O here: conn.c turns entries into iovecs and tells
 * the queue how many bytes the kernel took.
 */
#ifndef TIDINGS_OUTQ_H
#define TIDINGS_OUTQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "../common/sbuf.h"

struct outq_entry {
  struct sbuf *buf;
  size_t off;
};

struct outq {
  struct outq_entry *ring;
  uint32_t cap; /* power of two, or 0 */
  uint32_t head;
  uint32_t count;
  size_t bytes; /* unsent bytes over all entries */
};

/* Adds a reference to b (the queue takes one ref).  Returns 0 or -1 (OOM). */
int outq_push_ref(struct outq *q, struct sbuf *b);
/* Copies data into a buffer owned by the queue, appending to the last one
 * when it is private and has room.  Entries [0, nlocked) are in flight and
 * are never appended to.  Returns 0 or -1. */
int outq_push_copy(struct outq *q, const void *data, size_t len, uint32_t nlocked);
/* Fills up to max iovecs from entry skip on; returns how many. */
int outq_iov(const struct outq *q, uint32_t skip, struct iovec *iov, int max);
/* Drops n sent bytes from the front, releasing finished entries. */
void outq_consume(struct outq *q, size_t n);
/* The same, calling done(arg, buf) for each entry finished, before its
 * reference is released. */
void outq_consume_cb(struct outq *q, size_t n, void (*done)(void *arg, const struct sbuf *b),
                     void *arg);
/* Releases every entry and the ring. */
void outq_clear(struct outq *q);
/* Drops every entry after the first keep ones (a connection being
 * closed for slowness: what was not started is not worth sending). */
void outq_truncate(struct outq *q, uint32_t keep);
/* Frees the ring when empty. */
void outq_trim(struct outq *q);

#endif
