/* frame.h - WebSocket frame headers (RFC 6455 section 5.2): writing the
 * server's, parsing the client's, and following a client's byte stream.
 *
 * Server frames are never masked, so one encoded frame serves every
 * subscriber.  Everything here is plain data and pure functions on bytes
 * (no loop, no allocation), except frame_input_recv(), the body of a wslay
 * recv callback.
 */
#ifndef TIDINGS_FRAME_H
#define TIDINGS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <wslay/wslay.h>

#define FRAME_HEADER_MAX 10        /* an unmasked header: what the server writes */
#define FRAME_HEADER_MAX_MASKED 14 /* with a masking key: what a client writes */
enum {
  FRAME_TEXT = 0x1,
  FRAME_BINARY = 0x2,
  FRAME_CLOSE = 0x8,
  FRAME_PING = 0x9,
  FRAME_PONG = 0xA
};

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

/* ---- parsing a frame header ---- */

#define FRAME_INCOMPLETE (-2)
#define FRAME_EMALFORMED (-1)

/* One frame header as sent.  Nothing in it is checked against policy: a
 * caller decides which opcodes, reserved bits, unmasked frames, lengths and
 * non-minimal length encodings it accepts (wslay refuses the last; the
 * admin's status socket has never minded them). */
struct frame_head {
  uint64_t len;    /* payload length */
  uint8_t fin;     /* 1 on the last frame of a message */
  uint8_t rsv;     /* RSV1..3 as wslay numbers them: RSV1 is 4 (WSLAY_RSV1_BIT) */
  uint8_t opcode;  /* 0x0..0xF */
  uint8_t masked;  /* 1 when a masking key follows the length */
  uint8_t mask[4]; /* the masking key; zeros when not masked */
};

/* Parses the frame header at the start of buf[0..n), shaped like
 * picohttpparser.  Returns:
 *   > 0               the header's length (2 to FRAME_HEADER_MAX_MASKED);
 *                     *h is filled and the payload starts at buf + return;
 *   FRAME_INCOMPLETE  more bytes are needed (every proper prefix of a valid
 *                     header gives this); *h is untouched;
 *   FRAME_EMALFORMED  no valid frame starts here: a 64-bit length with its
 *                     most significant bit set.  Reported as soon as the
 *                     byte that shows it is in buf.  The stream cannot be
 *                     resynchronised: fail the connection (1002).
 * Reads at most FRAME_HEADER_MAX_MASKED bytes of buf. */
int frame_parse_head(const uint8_t *buf, size_t n, struct frame_head *h);

/* XORs a piece of a masked payload with the key in place.  p[0] is byte
 * `offset` of the frame's payload, so a payload can be unmasked in pieces
 * as it arrives. */
void frame_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* ---- following a client's stream ---- */

/* Follows the frame boundaries of a client's byte stream (lengths and FIN
 * bits, read with frame_parse_head(); wslay validates everything else), so
 * that the caller knows when the stream is between frames and between
 * messages.  Plain data, no allocation: embed it in the connection, zeroed. */
struct frame_tracker {
  uint64_t left;                        /* payload bytes of the current frame still to come */
  uint8_t hdr[FRAME_HEADER_MAX_MASKED]; /* the frame header seen so far */
  uint8_t hdr_len;
  uint8_t in_message; /* a fragmented message is arriving */
  uint8_t broken;     /* a malformed header: no boundary is known any more */
};

/* Feeds the next n bytes of the stream.  After a malformed header (which
 * wslay fails the connection for too) the tracker stops and never reports
 * idle again. */
void frame_track(struct frame_tracker *t, const uint8_t *p, size_t n);

/* True when no frame or fragmented message is under way. */
static inline int frame_tracker_idle(const struct frame_tracker *t) {
  return t->hdr_len == 0 && t->left == 0 && !t->in_message && !t->broken;
}

/* ---- feeding wslay ---- */

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

#endif
