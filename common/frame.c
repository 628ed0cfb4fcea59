#include "frame.h"

#include <string.h>

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
  while (n > 0) {
    if (t->left > 0) {
      size_t take = n < t->left ? n : (size_t)t->left;
      t->left -= take;
      p += take;
      n -= take;
      continue;
    }
    t->hdr[t->hdr_len++] = *p++;
    n--;
    if (t->hdr_len < 2) continue;
    unsigned l7 = t->hdr[1] & 0x7f;
    unsigned need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((t->hdr[1] & 0x80) ? 4 : 0);
    if (t->hdr_len < need) continue;
    uint64_t len = l7;
    if (l7 == 126) len = ((uint64_t)t->hdr[2] << 8) | t->hdr[3];
    if (l7 == 127) {
      len = 0;
      for (int i = 0; i < 8; i++) len = (len << 8) | t->hdr[2 + i];
    }
    unsigned op = t->hdr[0] & 0x0f, fin = t->hdr[0] & 0x80;
    if (op < 8) t->in_message = !fin; /* a data or continuation frame */
    t->left = len;
    t->hdr_len = 0;
  }
}
