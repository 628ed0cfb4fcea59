#include "admin_status.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/frame.h"
#include "../common/log.h"
#include "admin_metrics.h"

#define STATUS_FRAME_MAX 1024          /* the page sends pings and closes, nothing larger */
#define STATUS_QUEUE_MAX (256 * 1024)  /* a page this far behind is dropped */
#define STATUS_SNAPSHOT_PERIOD_MS 1000 /* each page's own second, from its opening */
#define STATUS_CLOSE_TIMEOUT_MS 10000  /* our Close must be taken by then */
#define STATUS_HEAD_MAX 256            /* the 101 response */

/* What is left in the buffer after the complete frames is part of one frame
 * the socket accepts, so the buffer never fills up. */
_Static_assert(FRAME_HEADER_MAX_MASKED + STATUS_FRAME_MAX < ADMIN_HEAD_MAX,
               "the input buffer holds any frame the status socket accepts");

static int send_frame(struct aconn *c, int opcode, const void *payload, size_t n, int close_after) {
  uint8_t h[FRAME_HEADER_MAX];
  size_t hl = frame_header(h, opcode, 0, n);
  return admin__send(c, h, hl, payload, n, close_after);
}

static int send_snapshot(struct aconn *c) {
  char *json;
  size_t n;
  int rc = admin_metrics_snapshot(c->a->view, &json, &n);
  if (rc < 0) {
    log_warn("admin_snapshot_failed", "status page snapshot skipped: %s", uv_strerror(rc));
    return rc;
  }
  c->snap_at = uv_now(c->a->loop);
  rc = send_frame(c, FRAME_TEXT, json, n, 0);
  free(json);
  return rc;
}

/* Nothing may follow a Close (RFC 6455 5.5.1): input is dropped from here
 * on and TCP closes once the frame is written. */
static void send_close(struct aconn *c, const uint8_t *payload, size_t n) {
  send_frame(c, FRAME_CLOSE, payload, n, 1);
  admin__set_state(c, ACONN_WS_CLOSING);
}

static void fail(struct aconn *c, uint16_t code) {
  uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
  send_close(c, p, sizeof(p));
}

int admin_status_open(struct aconn *c, struct http_str key) {
  assert(c->state == ACONN_HTTP);
  char accept[29], head[STATUS_HEAD_MAX]; /* 29: what http_accept_key() writes */
  http_accept_key(key, accept);
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                   accept);
  assert(n > 0 && (size_t)n < sizeof(head));
  admin__set_state(c, ACONN_WS);
  c->len = 0; /* the page sends nothing before it has the 101 */
  int rc = admin__send(c, head, (size_t)n, NULL, 0, 0);
  if (rc < 0) return rc;
  return send_snapshot(c);
}

void admin_status_input(struct aconn *c) {
  assert(c->state == ACONN_WS);
  uint8_t *b = (uint8_t *)c->buf;
  size_t off = 0;
  while (!c->closing) {
    struct frame_head h;
    int hl = frame_parse_head(b + off, c->len - off, &h);
    if (hl == FRAME_INCOMPLETE) break;
    if (hl < 0 || !h.masked || h.rsv) {
      fail(c, WSLAY_CODE_PROTOCOL_ERROR);
      return;
    }
    if (h.len > STATUS_FRAME_MAX) {
      fail(c, WSLAY_CODE_MESSAGE_TOO_BIG);
      return;
    }
    size_t n = (size_t)h.len;
    if (c->len - off - (size_t)hl < n) break;
    uint8_t *p = b + off + hl;
    frame_unmask(p, n, h.mask, 0);
    off += (size_t)hl + n;
    if (h.opcode == FRAME_CLOSE) {
      send_close(c, p, n >= 2 ? 2 : 0); /* echo the status code */
      return;
    }
    if (h.opcode == FRAME_PING) send_frame(c, FRAME_PONG, p, n, 0);
  }
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
  assert(c->len < FRAME_HEADER_MAX_MASKED + STATUS_FRAME_MAX);
}

void admin_status_tick(struct aconn *c, uint64_t now) {
  if (c->state == ACONN_WS_CLOSING) {
    if (now - c->since >= STATUS_CLOSE_TIMEOUT_MS) admin__close(c);
    return;
  }
  assert(c->state == ACONN_WS);
  if (c->tcp.write_queue_size > STATUS_QUEUE_MAX) admin__close(c);
  else if (now - c->snap_at >= STATUS_SNAPSHOT_PERIOD_MS) send_snapshot(c);
}
