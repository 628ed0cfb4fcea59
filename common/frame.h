/* frame.h - server-side WebSocket frame headers (RFC 6455 section 5.2).
 * Server frames are never masked, so one encoded frame serves every
 * subscriber. */
#ifndef TIDINGS_FRAME_H
#define TIDINGS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wslay/wslay.h>

#define FRAME_HEADER_MAX 10
enum { FRAME_TEXT = 0x1, FRAME_BINARY = 0x2, FRAME_CLOSE = 0x8, FRAME_PING = 0x9, FRAME_PONG = 0xA };

/* Writes a FIN frame header for a payload of len bytes into out; rsv1 sets
 * the permessage-deflate bit.  Returns the header length (2, 4 or 10). */
static inline size_t frame_header(uint8_t out[FRAME_HEADER_MAX], int opcode, int rsv1,
                                  uint64_t len) {
  out[0] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
  if (len < 126) {
    out[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    out[1] = 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

/* Follows the frame boundaries of a client's byte stream (lengths and FIN
 * bits only; wslay validates everything else), so that the caller knows
 * when the stream is between frames and between messages.  Plain data, no
 * allocation: embed it in the connection, zeroed. */
struct frame_tracker {
  uint64_t left;      /* payload bytes of the current frame still to come */
  uint8_t hdr[14];    /* the frame header seen so far */
  uint8_t hdr_len;
  uint8_t in_message; /* a fragmented message is arriving */
};

void frame_track(struct frame_tracker *t, const uint8_t *p, size_t n);

/* Bytes just read from a client, lent to wslay_event_recv() for the
 * length of that call: the caller points p at its read buffer and clears
 * it afterwards.  Nothing is owned. */
struct frame_input {
  const uint8_t *p;
  size_t n;
};

/* The body of a wslay recv callback reading from `in`: copies up to len
 * bytes, or sets WSLAY_ERR_WOULDBLOCK and returns -1 once in is empty. */
ssize_t frame_input_recv(wslay_event_context_ptr ctx, struct frame_input *in, uint8_t *buf,
                         size_t len);

/* True when no frame or fragmented message is under way. */
static inline int frame_tracker_idle(const struct frame_tracker *t) {
  return t->hdr_len == 0 && t->left == 0 && !t->in_message;
}

#endif
