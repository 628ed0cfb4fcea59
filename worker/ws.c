#include "ws.h"

#include <errno.h>
#include <string.h>

#include "../common/frame.h"
#include "../common/log.h"
#include "../common/sbuf.h"
#include "../common/utf8.h"
#include "auth.h"
#include "conn.h"
#include "pmd.h"
#include "proto.h"
#include "pubsub.h"
#include "recovery.h"
#include "worker.h"

/* How long a closing connection waits for the peer's close frame. */
#define CLOSE_LINGER_MS 5000
/* A control frame carries at most 125 bytes: a status code and this much reason. */
#define CLOSE_REASON_MAX 120

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user) {
  (void)flags;
  return frame_input_recv(ctx, ((struct conn *)user)->in, buf, len);
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user) {
  (void)flags;
  struct conn *c = user;
  if (conn_send_copy(c, data, len) < 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

/* Our own data frames bypass wslay (whose context may not exist while the
 * connection is idle): header and payload are copied into the outq. */
static int send_frame(struct conn *c, int opcode, const uint8_t *data, size_t len) {
  if (!ws_can_send(c)) return -1;
  uint8_t h[FRAME_HEADER_MAX];
  size_t hl = frame_header(h, opcode, 0, len);
  if (conn_send_copy(c, h, hl) < 0 || (len && conn_send_copy(c, data, len) < 0)) return -1;
  return 0;
}

/* The echo endpoint's answer.  With permessage-deflate negotiated it is
 * compressed as notifications are (broadcast.c): by the worker's shared
 * deflater, with the client's window, from --compression-threshold bytes
 * on, never with --no-compression.  msg may point into the worker's
 * inflate buffer: pmd_frame() only uses the deflate streams. */
static int send_echo(struct conn *c, int opcode, const uint8_t *msg, size_t len) {
  const struct config *cfg = c->w->cfg;
  if (c->pmd && !cfg->no_compression && len >= cfg->compression_threshold && ws_can_send(c)) {
    struct sbuf *f = pmd_frame(&c->w->pmd, (int)c->pmd_bits, opcode, msg, len);
    if (f) {
      int rc = conn_send_ref(c, f);
      sbuf_unref(f);
      return rc;
    }
    /* out of memory for the compressed copy: send it as it is */
  }
  return send_frame(c, opcode, msg, len);
}

/* Fails or closes the connection from our side: a close frame with code
 * and reason goes straight into the outq (wslay may have no context, or
 * may have queued a close of its own that is wrong: see ws_feed()), wslay
 * is told never to write again, and the connection drains.  Once only. */
static void queue_close(struct conn *c, uint16_t code, const char *reason) {
  if (!c->upgraded || c->state == CONN_CLOSED || c->close_queued) return;
  size_t rl = reason ? strlen(reason) : 0;
  if (rl > CLOSE_REASON_MAX) rl = CLOSE_REASON_MAX;
  uint8_t f[2 + 2 + CLOSE_REASON_MAX];
  size_t hl = frame_header(f, FRAME_CLOSE, 0, 2 + rl);
  f[hl] = (uint8_t)(code >> 8);
  f[hl + 1] = (uint8_t)code;
  if (rl) memcpy(f + hl + 2, reason, rl);
  c->close_queued = 1;
  /* What wslay still holds is at most a close of its own: every pong it
   * queued went to the outq when on_msg() saw its ping (flush_wslay()). */
  if (c->ws) wslay_event_shutdown_write(c->ws);
  if (conn_send_copy(c, f, hl + 2 + rl) < 0) {
    conn_close(c);
    return;
  }
  conn_drain(c, CLOSE_LINGER_MS);
}

/* ---- the JSON protocol, bound to this connection ---- */

static int op_send(void *ctx, const char *msg, size_t len) {
  struct conn *c = ctx;
  return send_frame(c, FRAME_TEXT, (const uint8_t *)msg, len);
}

static int op_subscribe(void *ctx, const char *topic, size_t tlen, const struct proto_since *since,
                        const char *id_json) {
  struct conn *c = ctx;
  struct worker *w = c->w;
  if (w->auth && !auth_allows(c->grant, AUTH_SUBSCRIBE, topic, tlen)) return PROTO_EFORBIDDEN;
  if (c->nsubs >= w->cfg->max_subscriptions) {
    /* subscribing again to a topic already held is still fine */
    for (struct sub *s = c->subs; s; s = s->cnext)
      if (s->topic->len == tlen && memcmp(s->topic->name, topic, tlen) == 0) return PROTO_OK;
    return PROTO_ETOOMANY;
  }
  int rc = topics_subscribe(&w->topics, &c->subs, c, topic, tlen);
  if (rc < 0) return PROTO_EINTERNAL;
  c->nsubs += rc;
  struct sub *s = c->subs;
  if (rc == 0) /* already subscribed: the subscription goes on as it is */
    for (s = c->subs; s && (s->topic->len != tlen || memcmp(s->topic->name, topic, tlen));
         s = s->cnext) {
    }
  if (!s || !s->topic->ext) return PROTO_OK;
  /* a topic with history: the reply carries its epoch and offset */
  int created = rc;
  rc = recovery_subscribe(c, s, since, id_json, !created);
  if (rc < 0 && created && topics_unsubscribe(&w->topics, &c->subs, topic, tlen)) c->nsubs--;
  return rc;
}

static int op_unsubscribe(void *ctx, const char *topic, size_t tlen) {
  struct conn *c = ctx;
  if (topics_unsubscribe(&c->w->topics, &c->subs, topic, tlen) == 0) return PROTO_ENOTSUB;
  c->nsubs--;
  return PROTO_OK;
}

static int op_publish(void *ctx, const char *topic, size_t tlen, const char *payload, size_t plen,
                      const char *id_json) {
  struct conn *c = ctx;
  if (c->w->auth && !auth_allows(c->grant, AUTH_PUBLISH, topic, tlen)) return PROTO_EFORBIDDEN;
  return pubsub_publish(c, topic, tlen, payload, plen, id_json);
}

static int op_history(void *ctx, const char *topic, size_t tlen, unsigned long long since,
                      unsigned limit, const char *id_json) {
  struct conn *c = ctx;
  if (c->w->auth && !auth_allows(c->grant, AUTH_SUBSCRIBE, topic, tlen)) return PROTO_EFORBIDDEN;
  return recovery_query(c, topic, tlen, since, limit, id_json);
}

const struct proto_ops ws_proto_ops = {op_subscribe, op_unsubscribe, op_publish, op_send,
                                       op_history};

/* The per-connection token bucket of --rate-limit/--rate-burst.  A message
 * over the limit gets an error reply; a client that keeps sending after
 * --rate-burst refusals in a row is closed with 1008. */
static int rate_allow(struct conn *c) {
  const struct config *cfg = c->w->cfg;
  if (cfg->rate_limit <= 0) return 1;
  uint64_t now = uv_now(c->w->loop);
  if (!c->rate_started) {
    c->rate_started = 1;
    c->rate_tokens = cfg->rate_burst;
  } else if (now > c->rate_last) {
    c->rate_tokens += (double)(now - c->rate_last) * cfg->rate_limit / 1000.0;
    if (c->rate_tokens > cfg->rate_burst) c->rate_tokens = cfg->rate_burst;
  }
  c->rate_last = now;
  if (c->rate_tokens >= 1.0) {
    c->rate_tokens -= 1.0;
    c->rate_strikes = 0;
    return 1;
  }
  metric_add(c->w->m, M_RATE_LIMITED, 1);
  if (++c->rate_strikes > (uint32_t)cfg->rate_burst) {
    ws_close(c, WSLAY_CODE_POLICY_VIOLATION, "rate limit exceeded");
    return 0;
  }
  proto_reply_error(&ws_proto_ops, c, PROTO_ERATE, NULL, 0, NULL);
  return 0;
}

/* Moves what wslay has queued (a pong, its close) into the outq.  Called
 * before anything else is queued for a message that wslay delivers, so
 * that control frames are answered in the order they arrive: wslay queues
 * the pong for a ping just before it calls on_msg() for that ping, and
 * without this the pong would wait in wslay's queue until pump() while the
 * reply to a message completed later in the same read went ahead of it.
 * Returns 0 or -1 (the outq refused the bytes). */
static int flush_wslay(struct conn *c) {
  if (c->ws && wslay_event_want_write(c->ws) && wslay_event_send(c->ws) < 0) return -1;
  return 0;
}

/* The peer's close frame.  wslay has already checked the status code
 * (RFC 6455 7.4: codes that may not be sent, 1005, 1006, 1015, and any
 * outside 1000-1011 and 3000-4999, get 1002 and never come here) and has
 * queued its answer, the same code and reason, still waiting in its queue.
 * Two cases are left to us, and in both our close replaces that answer:
 *  - a payload of one byte, half a status code, is a protocol error (5.5.1),
 *    where wslay would answer with an empty close;
 *  - a reason that is not UTF-8 fails the connection with 1007 (5.5.1, 8.1).
 *    wslay checks the reason as it arrives, but starts every piece of a
 *    payload split over reads two bytes in as if it held the status code,
 *    so it can miss a bad byte there: the whole reason is checked here.
 *    The converse is not fixed: a valid reason cut inside a character by
 *    the split gets wslay's 1007 before we see it.  Telling the two apart
 *    needs the UTF-8 decoder state kept per connection across reads, and
 *    struct conn has no room for it (a test marks it as a known failure). */
static void on_close_frame(struct conn *c, const struct wslay_event_on_msg_recv_arg *arg) {
  if (arg->msg_length == 1) {
    queue_close(c, WSLAY_CODE_PROTOCOL_ERROR, "close frame with a 1-byte payload");
    return;
  }
  if (arg->msg_length > 2 && !utf8_valid(arg->msg + 2, arg->msg_length - 2)) {
    log_debug("close_reason_invalid", "conn %llu: close reason is not UTF-8",
              (unsigned long long)c->id);
    queue_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "close reason is not UTF-8");
    return;
  }
  if (flush_wslay(c) < 0) conn_close(c); /* wslay's echo; pump() drains */
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user) {
  (void)ctx;
  struct conn *c = user;
  if (c->close_queued) return; /* failing the connection: ignore the rest */
  if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
    on_close_frame(c, arg);
    return;
  }
  if (flush_wslay(c) < 0) {
    conn_close(c);
    return;
  }
  const uint8_t *msg = arg->msg;
  size_t mlen = arg->msg_length;
  if ((arg->rsv & WSLAY_RSV1_BIT) &&
      (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)) {
    int rc = pmd_inflate(&c->w->pmd, arg->msg, arg->msg_length, &msg, &mlen);
    if (rc == PMD_ETOOBIG) {
      ws_close(c, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big");
      return;
    }
    if (rc != PMD_OK) {
      ws_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "cannot inflate message");
      return;
    }
  }
  if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
    metric_add(c->w->m, M_MESSAGES_IN, 1);
    if (c->kind == CONN_PUBSUB && !rate_allow(c)) return;
  }
  switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
      if (!utf8_valid(msg, mlen)) {
        ws_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8 in text message");
        return;
      }
      if (c->kind == CONN_ECHO) {
        send_echo(c, FRAME_TEXT, msg, mlen);
        return;
      }
      proto_handle(&ws_proto_ops, c, (const char *)msg, mlen);
      return;
    case WSLAY_BINARY_FRAME:
      if (c->kind == CONN_ECHO) {
        send_echo(c, FRAME_BINARY, msg, mlen);
        return;
      }
      ws_close(c, WSLAY_CODE_UNSUPPORTED_DATA, "binary messages are not supported");
      return;
    case WSLAY_PONG: c->awaiting_pong = 0; return;
    default: return;
  }
}

static void pump(struct conn *c) {
  if (flush_wslay(c) < 0) {
    conn_close(c);
    return;
  }
  conn_mark_dirty(c);
  if (wslay_event_get_close_sent(c->ws) && c->state == CONN_WS) {
    c->close_queued = 1;
    conn_drain(c, CLOSE_LINGER_MS);
  }
}

/* The wslay context (about 9 KiB) exists only while a connection is in the
 * middle of something: a frame or a fragmented message arriving, or a
 * close handshake.  An idle connection holds none.  To know when the byte
 * stream is between frames, the frame headers are followed here as well
 * (lengths and FIN bits only; wslay does the validation). */
static int ensure_ctx(struct conn *c) {
  if (c->ws) return 0;
  struct wslay_event_callbacks cbs = {recv_cb, send_cb, NULL, NULL, NULL, NULL, on_msg};
  if (wslay_event_context_server_init(&c->ws, &cbs, c) != 0) return -1;
  wslay_event_config_set_max_recv_msg_length(c->ws, c->w->cfg->max_message_size);
  if (c->pmd) wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
  /* made to read the peer's answer to our close: it must not write */
  if (c->close_queued) wslay_event_shutdown_write(c->ws);
  return 0;
}

static void maybe_release_ctx(struct conn *c) {
  if (c->ws && c->state == CONN_WS && !c->close_queued && frame_tracker_idle(&c->frames) &&
      !wslay_event_want_write(c->ws) && wslay_event_want_read(c->ws)) {
    wslay_event_context_free(c->ws);
    c->ws = NULL;
  }
}

int ws_start(struct conn *c) {
  c->upgraded = 1;
  return 0;
}

void ws_feed(struct conn *c, const uint8_t *data, size_t len) {
  if (ensure_ctx(c) < 0) {
    conn_close(c);
    return;
  }
  if (!wslay_event_want_read(c->ws)) return; /* closing: discard */
  frame_track(&c->frames, data, len);
  struct frame_input in = {data, len};
  c->in = &in;
  int rc = wslay_event_recv(c->ws);
  c->in = NULL;
  if (c->state == CONN_CLOSED) return;
  if (rc == WSLAY_ERR_CALLBACK_FAILURE) {
    /* Our recv callback never fails, so this is wslay's frame layer
     * refusing a header: a control frame with FIN clear or more than 125
     * bytes of payload, or a 64-bit length with the top bit set.  These
     * never reach on_frame_recv_start; wslay queues an empty close (no
     * status code) and stops reading.  RFC 6455 5.5 and 7.1.7: the
     * connection fails with 1002, so that close is replaced by ours. */
    queue_close(c, WSLAY_CODE_PROTOCOL_ERROR, "protocol error");
    return;
  }
  if (rc < 0) {
    conn_close(c);
    return;
  }
  pump(c);
  maybe_release_ctx(c);
}

void ws_close(struct conn *c, uint16_t code, const char *reason) { queue_close(c, code, reason); }

void ws_ping(struct conn *c) {
  static const uint8_t ping[2] = {0x80 | FRAME_PING, 0};
  if (ws_can_send(c) && conn_send_copy(c, ping, sizeof(ping)) == 0) c->awaiting_pong = 1;
}

int ws_close_received(const struct conn *c) {
  return c->ws && wslay_event_get_close_received(c->ws);
}

int ws_can_send(const struct conn *c) { return c->state == CONN_WS && !c->close_queued; }

void ws_free(struct conn *c) {
  if (c->ws) wslay_event_context_free(c->ws);
  c->ws = NULL;
}
