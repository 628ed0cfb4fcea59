#include "frame.h"

#include <assert.h>
#include <string.h>

#define LEN16 126 /* the 7-bit length that announces a 16-bit one */
#define LEN64 127 /* ... and a 64-bit one */

int frame_parse_head(const uint8_t *buf, size_t n, struct frame_head *h) {
  if (n < 2) return FRAME_INCOMPLETE;
  unsigned l7 = buf[1] & 0x7f, masked = buf[1] >> 7;
  size_t ext = l7 == LEN16 ? 2 : l7 == LEN64 ? 8 : 0;
  /* RFC 6455 5.2: the top bit of a 64-bit length must be 0 */
  if (ext == 8 && n > 2 && (buf[2] & 0x80)) return FRAME_EMALFORMED;
  size_t need = 2 + ext + (masked ? 4 : 0);
  if (n < need) return FRAME_INCOMPLETE;
  uint64_t len = l7;
  if (ext) {
    len = 0;
    for (size_t i = 0; i < ext; i++) len = (len << 8) | buf[2 + i];
  }
  h->len = len;
  h->fin = buf[0] >> 7;
  h->rsv = (buf[0] >> 4) & 7;
  h->opcode = buf[0] & 0x0f;
  h->masked = (uint8_t)masked;
  if (masked) memcpy(h->mask, buf + 2 + ext, 4);
  else memset(h->mask, 0, 4);
  return (int)need;
}

void frame_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset) {
  for (size_t i = 0; i < n; i++) p[i] ^= mask[(offset + i) & 3];
}

ssize_t frame_input_recv(wslay_event_context_ptr ctx, struct frame_input *in, uint8_t *buf,
                         size_t len) {
  if (in->n == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < in->n ? len : in->n;
  memcpy(buf, in->p, n);
  in->p += n;
  in->n -= n;
  return (ssize_t)n;
}

void frame_track(struct frame_tracker *t, const uint8_t *p, size_t n) {
  while (n > 0 && !t->broken) {
    if (t->left > 0) {
      size_t take = n < t->left ? n : (size_t)t->left;
      t->left -= take;
      p += take;
      n -= take;
      continue;
    }
    /* Copy as much as a header can hold, parse, and give back what lies
     * past the header's end. */
    size_t have = t->hdr_len, take = sizeof(t->hdr) - have;
    if (take > n) take = n;
    memcpy(t->hdr + have, p, take);
    struct frame_head h;
    int r = frame_parse_head(t->hdr, have + take, &h);
    if (r == FRAME_INCOMPLETE) {
      /* a full header buffer always parses one way or the other */
      assert(have + take < sizeof(t->hdr) && take == n);
      t->hdr_len = (uint8_t)(have + take);
      return;
    }
    if (r < 0) {
      t->broken = 1;
      return;
    }
    assert((size_t)r > have && (size_t)r <= have + take);
    p += (size_t)r - have;
    n -= (size_t)r - have;
    t->hdr_len = 0;
    if (h.opcode < FRAME_CLOSE) t->in_message = !h.fin; /* a data or continuation frame */
    t->left = h.len;
  }
}
