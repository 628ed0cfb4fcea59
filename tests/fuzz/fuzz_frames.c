/* fuzz_frames - the incoming frame and message path of worker/ws.c without
 * sockets: a wslay server context reads the input as the bytes a client
 * sent, and every complete message goes through what ws.c's on_msg() does
 * before the protocol: pmd_inflate() (worker/pmd.c) when RSV1 is set, then
 * utf8_valid() (common/utf8.c) for text.
 *
 * Input: byte 0 seeds the sizes of the chunks the stream arrives in (0: all
 * at once; else 1..2^(b&7) bytes at a time, pseudo-random), the rest is the
 * byte stream from the client.
 *
 * The stream is read twice:
 *  A. by one wslay context for the whole connection;
 *  B. as ws.c does it: the frame headers are followed beside wslay by
 *     frame_track() (common/frame.c, the same code ws.c runs) and the context is freed whenever the
 *     stream is between frames and between messages, and made anew for the
 *     next bytes (ws.c's maybe_release_ctx()/ensure_ctx()).
 * Both must deliver the same messages.
 *
 * Invariants checked besides the sanitizers:
 *  - utf8_valid()/utf8_valid_prefix() agree with an independent decoder;
 *  - pmd_inflate() returns PMD_OK with at most 64 KiB, PMD_ETOOBIG or
 *    PMD_ECORRUPT, and the output is what zlib's own inflate makes of it;
 *  - runs A and B deliver the same sequence of messages. */
#include <wslay/wslay.h>
#include <zlib.h>

#include "../../common/utf8.h"
#include "../../common/frame.h"
#include "../../worker/pmd.h"
#include "fuzz_common.h"

#define MAX_MESSAGE (64 * 1024)
#define MAX_LOG 64

struct session {
  wslay_event_context_ptr ws;
  struct frame_input in;
  int close_queued;
  /* ws.c's frame tracking */
  struct frame_tracker frames;
  /* what was delivered */
  int nmsg;
  uint64_t log[MAX_LOG];
};

static struct pmd pmd; /* one per worker, shared by every connection */
static uint8_t *zout;  /* reference inflate output */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user) {
  (void)flags;
  return frame_input_recv(ctx, &((struct session *)user)->in, buf, len);
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user) {
  (void)ctx, (void)data, (void)flags, (void)user;
  return (ssize_t)len;
}

/* zlib's own view of a permessage-deflate message, as the reference for
 * pmd_inflate(): returns PMD_OK/ETOOBIG/ECORRUPT and the output length. */
static int ref_inflate(const uint8_t *in, size_t len, size_t *outlen) {
  z_stream s;
  memset(&s, 0, sizeof(s));
  if (inflateInit2(&s, -15) != Z_OK) abort();
  static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
  s.next_out = zout;
  s.avail_out = MAX_MESSAGE + 1;
  int res = PMD_OK;
  for (int pass = 0; pass < 2 && res == PMD_OK; pass++) {
    s.next_in = (Bytef *)(uintptr_t)(pass == 0 ? in : tail);
    s.avail_in = (uInt)(pass == 0 ? len : sizeof(tail));
    while (s.avail_in > 0) {
      int rc = inflate(&s, Z_SYNC_FLUSH);
      if (s.avail_out == 0) {
        res = PMD_ETOOBIG;
        break;
      }
      if (rc == Z_STREAM_END || rc == Z_BUF_ERROR) break;
      if (rc != Z_OK) {
        res = PMD_ECORRUPT;
        break;
      }
    }
  }
  *outlen = MAX_MESSAGE + 1 - s.avail_out;
  inflateEnd(&s);
  return res;
}

static void fail_conn(struct session *s, uint16_t code) {
  if (s->close_queued) return;
  s->close_queued = 1;
  wslay_event_queue_close(s->ws, code, (const uint8_t *)"x", 1);
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user) {
  (void)ctx;
  struct session *s = user;
  if (s->close_queued) return;
  const uint8_t *msg = arg->msg;
  size_t mlen = arg->msg_length;
  uint64_t h = fuzz_hash(msg, mlen) ^ ((uint64_t)arg->opcode << 56) ^ ((uint64_t)arg->rsv << 48);
  if (s->nmsg < MAX_LOG) s->log[s->nmsg] = h;
  s->nmsg++;
  if ((arg->rsv & WSLAY_RSV1_BIT) &&
      (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)) {
    int rc = pmd_inflate(&pmd, arg->msg, arg->msg_length, &msg, &mlen);
    size_t rlen;
    int want = ref_inflate(arg->msg, arg->msg_length, &rlen);
    FUZZ_CHECK(rc == PMD_OK || rc == PMD_ETOOBIG || rc == PMD_ECORRUPT);
    FUZZ_CHECK(rc == want);
    if (rc == PMD_ETOOBIG) {
      fail_conn(s, WSLAY_CODE_MESSAGE_TOO_BIG);
      return;
    }
    if (rc != PMD_OK) {
      fail_conn(s, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA);
      return;
    }
    FUZZ_CHECK(mlen <= MAX_MESSAGE && mlen == rlen);
    FUZZ_CHECK(mlen == 0 || memcmp(msg, zout, mlen) == 0);
  }
  if (arg->opcode == WSLAY_TEXT_FRAME) {
    int ok = utf8_valid(msg, mlen);
    size_t pre = utf8_valid_prefix(msg, mlen);
    size_t ref = ref_utf8_prefix(msg, mlen);
    FUZZ_CHECK(pre == ref);
    FUZZ_CHECK(ok == (ref == mlen));
    if (!ok) fail_conn(s, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA);
  } else if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->msg_length > 2) {
    (void)utf8_valid(arg->msg + 2, arg->msg_length - 2);
  }
}

static void session_ctx(struct session *s) {
  if (s->ws) return;
  struct wslay_event_callbacks cbs = {recv_cb, send_cb, NULL, NULL, NULL, NULL, on_msg};
  if (wslay_event_context_server_init(&s->ws, &cbs, s) != 0) abort();
  wslay_event_config_set_max_recv_msg_length(s->ws, MAX_MESSAGE);
  wslay_event_config_set_allowed_rsv_bits(s->ws, WSLAY_RSV1_BIT);
}

/* ws_feed(): returns 0, or -1 when the connection is over. */
static int feed(struct session *s, const uint8_t *p, size_t n, int release) {
  session_ctx(s);
  if (!wslay_event_want_read(s->ws)) return -1;
  frame_track(&s->frames, p, n);
  s->in = (struct frame_input){p, n};
  int rc = wslay_event_recv(s->ws);
  s->in = (struct frame_input){NULL, 0};
  if (rc < 0) return -1;
  if (wslay_event_want_write(s->ws) && wslay_event_send(s->ws) < 0) return -1;
  if (wslay_event_get_close_sent(s->ws)) s->close_queued = 1;
  if (release && !s->close_queued && frame_tracker_idle(&s->frames) &&
      !wslay_event_want_write(s->ws) && wslay_event_want_read(s->ws)) {
    wslay_event_context_free(s->ws);
    s->ws = NULL;
  }
  return 0;
}

static void run(struct session *s, const uint8_t *data, size_t size, uint8_t seed, int release) {
  memset(s, 0, sizeof(*s));
  uint32_t x = 0x9e3779b9u ^ seed;
  size_t off = 0;
  while (off < size) {
    size_t n = size - off;
    if (seed) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      size_t lim = (size_t)1 << (seed & 7);
      size_t c = 1 + x % lim;
      if (c < n) n = c;
    }
    if (feed(s, data + off, n, release) < 0) break;
    off += n;
  }
  if (s->ws) wslay_event_context_free(s->ws);
  s->ws = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!zout) {
    pmd_init(&pmd, MAX_MESSAGE);
    zout = malloc(MAX_MESSAGE + 1);
  }
  if (size < 1) return 0;
  uint8_t *stream = fuzz_dup(data + 1, size - 1);
  static struct session a, b;
  run(&a, stream, size - 1, data[0], 0);
  run(&b, stream, size - 1, data[0], 1);
  if (a.nmsg != b.nmsg)
    fprintf(stderr, "one context: %d messages, released between frames: %d\n", a.nmsg, b.nmsg);
  FUZZ_CHECK(a.nmsg == b.nmsg);
  for (int i = 0; i < a.nmsg && i < MAX_LOG; i++) FUZZ_CHECK(a.log[i] == b.log[i]);
  free(stream);
  return 0;
}
