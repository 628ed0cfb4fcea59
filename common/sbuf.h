/* sbuf.h - reference-counted immutable byte buffers.
 *
 * A broadcast frame is built once into an sbuf and every subscriber's output
 * queue holds a reference to it; the bytes are freed when the last reference
 * is dropped.  Single-threaded: all references live on one loop.
 *
 * sbuf_new() returns a buffer with refcount 1 owned by the caller; the caller
 * fills data[0..cap) and sets len before sharing it.  sbuf_ref() adds a
 * reference, sbuf_unref() drops one and frees on the last.
 */
#ifndef TIDINGS_SBUF_H
#define TIDINGS_SBUF_H

#include <stddef.h>
#include <stdint.h>

struct sbuf {
  uint32_t refs;
  uint64_t born_us; /* broadcast frames: when the message arrived; 0 otherwise */
  size_t len;
  size_t cap;
  uint8_t data[];
};

/* Returns NULL when out of memory. */
struct sbuf *sbuf_new(size_t cap);
/* A new sbuf holding a copy of data. */
struct sbuf *sbuf_copy(const void *data, size_t len);
static inline struct sbuf *sbuf_ref(struct sbuf *b) {
  b->refs++;
  return b;
}
void sbuf_unref(struct sbuf *b);

#endif
