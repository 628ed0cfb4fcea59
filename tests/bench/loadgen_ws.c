/* loadgen: WebSocket client connections.
 *
 * Reading: libuv reads into one shared buffer and complete frames are
 * handled in place; only the tail of an incomplete frame is copied into the
 * connection's own buffer, and the next read asks for exactly the missing
 * bytes, so a connection owns a read buffer only while it has a partial
 * frame (and during the HTTP handshake).
 *
 * Writing: frames are masked straight into the connection's collecting
 * buffer; conn_flush tries a direct write first and otherwise hands the
 * buffer to one uv_write while the other buffer keeps collecting.  No
 * allocation per message once the buffers have grown. */
#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

#define MAX_MESSAGE (64u << 20)
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static char rd_shared[256 * 1024];
static char *zout; /* inflate output, shared */
static size_t zcap;

static void on_closed(uv_handle_t *h);
static void process_rbuf(struct conn *c);

void ws_cleanup(void) {
  free(zout);
  zout = NULL;
  zcap = 0;
}

const char *fail_name(enum fail_reason r) {
  switch (r) {
    case FAIL_CONNECT: return "connect";
    case FAIL_HANDSHAKE: return "handshake";
    case FAIL_SUBSCRIBE: return "subscribe";
    case FAIL_TIMEOUT: return "timeout";
    case FAIL_CLOSED: return "closed";
    case FAIL_PROTOCOL: return "protocol";
    default: return "none";
  }
}

/* ---------------- lifecycle ---------------- */

static void hs_done(struct conn *c) {
  if (c->in_hs) {
    c->in_hs = 0;
    g.inflight_hs--;
  }
}

void conn_close(struct conn *c) {
  if (c->state == CS_DEAD) return;
  hs_done(c);
  c->state = CS_DEAD;
  uv_os_fd_t fd;
  if (c->rx_direct && uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0)
    epoll_ctl(g.rx_epfd, EPOLL_CTL_DEL, fd, NULL);
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_closed(uv_handle_t *h) {
  struct conn *c = h->data;
  free(c->rbuf);
  free(c->msg);
  free(c->out[0].p);
  free(c->out[1].p);
  c->rbuf = c->msg = c->out[0].p = c->out[1].p = NULL;
  c->rlen = c->rcap = c->mlen = c->mcap = 0;
  c->out[0].len = c->out[0].cap = c->out[1].len = c->out[1].cap = 0;
  if (c->zs) {
    inflateEnd(c->zs);
    free(c->zs);
    c->zs = NULL;
  }
  g.open_handles--;
  lg_open_more();
}

/* A connection that ends before it was ready is a setup failure; one that
 * ends after it was ready and before the closing phase is "dropped". */
static void note_end(struct conn *c, enum fail_reason why, const char *msg) {
  if (!c->resolved) {
    c->resolved = 1;
    c->fail = (uint8_t)why;
    g.nfail[why]++;
    if (g.errors_printed < 5) {
      g.errors_printed++;
      lg_log("%s %u: %s failed: %s", c->role == ROLE_SUB ? "sub" : "pub", c->idx, fail_name(why),
             msg);
    }
    lg_on_resolved();
  } else if (c->ready && !c->dropped && g.phase < PH_CLOSING && !c->close_sent) {
    c->dropped = 1;
    g.dropped++;
    if (c->e2e_counted) { /* later messages do not wait for it (earlier ones expire) */
      c->e2e_counted = 0;
      g.e2e_need[c->topic]--;
    }
    if (g.errors_printed < 5) {
      g.errors_printed++;
      lg_log("%s %u: connection lost: %s", c->role == ROLE_SUB ? "sub" : "pub", c->idx, msg);
    }
  }
}

void conn_fail(struct conn *c, enum fail_reason why, const char *fmt, ...) {
  if (c->state == CS_DEAD) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  note_end(c, why, msg);
  conn_close(c);
}

/* ---------------- writing ---------------- */

static char *out_reserve(struct conn *c, size_t n) {
  struct outbuf *o = &c->out[c->cur];
  if (o->cap - o->len < n) {
    size_t cap = o->cap ? o->cap : 512;
    while (cap - o->len < n) cap *= 2;
    char *p = realloc(o->p, cap);
    if (!p) return NULL;
    o->p = p;
    o->cap = cap;
  }
  return o->p + o->len;
}

/* XORs src into dst with the 4-byte key starting at key offset *ko */
static void mask_copy(char *dst, const char *src, size_t n, const uint8_t key[4], unsigned *ko) {
  uint8_t k8[8];
  for (unsigned i = 0; i < 8; i++) k8[i] = key[(*ko + i) & 3];
  uint64_t k;
  memcpy(&k, k8, 8);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    memcpy(&x, src + i, 8);
    x ^= k;
    memcpy(dst + i, &x, 8);
  }
  for (; i < n; i++) dst[i] = (char)(src[i] ^ k8[i & 7]);
  *ko = (unsigned)((*ko + n) & 3);
}

/* Writes a frame header with a fresh masking key; returns the bytes used. */
static size_t put_header(char *p, unsigned opcode, size_t len, uint8_t key[4]) {
  size_t h = 0;
  p[h++] = (char)(0x80 | opcode);
  if (len < 126) {
    p[h++] = (char)(0x80 | len);
  } else if (len < 65536) {
    p[h++] = (char)(0x80 | 126);
    p[h++] = (char)(len >> 8);
    p[h++] = (char)len;
  } else {
    p[h++] = (char)(0x80 | 127);
    for (int i = 7; i >= 0; i--) p[h++] = (char)((uint64_t)len >> (8 * i));
  }
  uint32_t r = (uint32_t)rng_next();
  memcpy(key, &r, 4);
  memcpy(p + h, key, 4);
  return h + 4;
}

static int queue_frame(struct conn *c, unsigned opcode, const void *data, size_t len) {
  char *p = out_reserve(c, 14 + len);
  if (!p) return -1;
  uint8_t key[4];
  unsigned ko = 0;
  size_t h = put_header(p, opcode, len, key);
  mask_copy(p + h, data, len, key, &ko);
  c->out[c->cur].len += h + len;
  return 0;
}

static void on_write(uv_write_t *req, int status) {
  struct conn *c = req->data;
  c->writing = 0;
  struct outbuf *o = &c->out[c->cur ^ 1];
  o->len = 0;
  if (o->cap > (1u << 20) || (c->role == ROLE_SUB && o->cap > 4096)) {
    free(o->p);
    o->p = NULL;
    o->cap = 0;
  }
  if (c->state == CS_DEAD) return;
  if (status < 0) {
    conn_fail(c, FAIL_CLOSED, "write: %s", uv_strerror(status));
    return;
  }
  conn_flush(c);
}

void conn_flush(struct conn *c) {
  if (c->writing || c->state == CS_DEAD) return;
  struct outbuf *o = &c->out[c->cur];
  if (!o->len) return;
  uv_buf_t b = uv_buf_init(o->p, (unsigned)o->len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n >= 0 && (size_t)n == o->len) {
    o->len = 0;
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    conn_fail(c, FAIL_CLOSED, "write: %s", uv_strerror(n));
    return;
  }
  if (n < 0) n = 0;
  b = uv_buf_init(o->p + n, (unsigned)(o->len - (size_t)n));
  c->cur ^= 1;
  c->writing = 1;
  c->wreq.data = c;
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc < 0) {
    c->writing = 0;
    conn_fail(c, FAIL_CLOSED, "write: %s", uv_strerror(rc));
  }
}

void conn_send_close(struct conn *c, unsigned code) {
  if (c->state == CS_DEAD) return;
  if (!c->ws) {
    conn_close(c);
    return;
  }
  if (!c->close_sent) {
    char p[2] = {(char)(code >> 8), (char)code};
    queue_frame(c, 0x8, p, 2);
    c->close_sent = 1;
    conn_flush(c);
  }
  if (c->state != CS_DEAD) c->state = CS_CLOSING;
}

/* ---------------- publishing ---------------- */

static const char PUB_A[] = "{\"type\":\"publish\",\"topic\":\"";
static const char PUB_B[] = "\",\"payload\":{\"seq\":";
static const char PUB_C[] = ",\"ts\":";
static const char PUB_D[] = ",\"pad\":\"";
static const char PUB_E[] = "\"}}";
#define LIT(s) (sizeof(s) - 1)

/* The variable head of the next publish of c (everything before the
 * pad): start, the topic, then the sequence number and the send time.
 * Returns its length; *topic is the topic's index. */
static size_t pub_head(const struct conn *c, uint64_t ts, const char *start, size_t slen,
                       char head[256], uint32_t *topic) {
  uint64_t s = c->s_next;
  uint32_t t = (uint32_t)((s + c->idx) % g.o.topics);
  uint64_t seq = ((uint64_t)c->idx << 32) | s;
  char *h = head;
  memcpy(h, start, slen);
  h += slen;
  memcpy(h, g.topic_name[t], g.topic_len[t]);
  h += g.topic_len[t];
  memcpy(h, PUB_B, LIT(PUB_B));
  h += LIT(PUB_B);
  h = u64_to_dec(h, seq);
  memcpy(h, PUB_C, LIT(PUB_C));
  h += LIT(PUB_C);
  h = u64_to_dec(h, ts);
  memcpy(h, PUB_D, LIT(PUB_D));
  h += LIT(PUB_D);
  *topic = t;
  return (size_t)(h - head);
}

/* ---------------- --e2e: the window of complete deliveries ----------------
 *
 * A publisher's message s stays in slot s % W of its ring until every
 * subscriber of its topic (those ready when publishing began) has received
 * it, or the server answered it with an error, or E2E_GIVE_UP_NS passed.
 * e2e_low is the oldest message not complete; the publisher may send while
 * s_next - e2e_low < W, so a slot is never reused while its message is out. */

static int ts_in_window(uint64_t ts) { return ts >= g.t_start && ts < g.t_end; }

/* moves e2e_low past the completed messages; marks the publisher for a
 * refill when that opened its window */
static void e2e_advance(struct conn *c) {
  uint64_t low0 = c->e2e_low;
  while (c->e2e_low < c->s_next && c->ring[c->e2e_low % g.o.window].rem == 0) c->e2e_low++;
  if (c->e2e_low != low0 && !c->e2e_kick) {
    c->e2e_kick = 1;
    g.e2e_kicks++;
  }
}

/* one delivery of message s of publisher c, at now */
static void e2e_delivered(struct conn *c, uint64_t s, uint64_t now) {
  if (s < c->e2e_low || s >= c->s_next) return; /* complete already, or not ours */
  struct e2e_slot *sl = &c->ring[s % g.o.window];
  if (sl->rem == 0) return; /* a duplicate after completion */
  if (--sl->rem) return;
  if (ts_in_window(sl->ts)) {
    g.e2e_done++;
    hist_add(&g.e2e_lat, now > sl->ts ? now - sl->ts : 0);
  }
  if (s == c->e2e_low) e2e_advance(c);
}

/* message s of c will not be delivered (an error reply): out of the window */
static void e2e_drop(struct conn *c, uint64_t s) {
  if (s < c->e2e_low || s >= c->s_next) return;
  c->ring[s % g.o.window].rem = 0;
  if (s == c->e2e_low) e2e_advance(c);
}

/* refills the windows that completions opened (once per read, not per
 * delivery, so a publisher writes batches) */
static void e2e_refill(void) {
  if (!g.e2e_kicks) return;
  g.e2e_kicks = 0;
  for (uint32_t i = 0; i < g.o.pubs; i++) {
    struct conn *c = &g.conns[g.o.subs + i];
    if (!c->e2e_kick) continue;
    c->e2e_kick = 0;
    pub_pump(c);
  }
}

/* gives up on messages out for longer than E2E_GIVE_UP_NS (a subscriber
 * that was lost, a delivery the server dropped), so the window moves on;
 * they are counted as expired */
void e2e_expire(uint64_t now) {
  if (!g.o.e2e) return;
  for (uint32_t i = 0; i < g.o.pubs; i++) {
    struct conn *c = &g.conns[g.o.subs + i];
    if (!c->ring) continue;
    while (c->e2e_low < c->s_next) {
      struct e2e_slot *sl = &c->ring[c->e2e_low % g.o.window];
      if (sl->rem && now - sl->ts < E2E_GIVE_UP_NS) break;
      if (sl->rem && ts_in_window(sl->ts)) g.e2e_expired++;
      sl->rem = 0;
      e2e_advance(c);
    }
  }
  e2e_refill();
}

/* A publish of c to topic t went out at ts: counted. */
static void pub_sent(struct conn *c, uint32_t t, uint64_t ts) {
  uint64_t s = c->s_next++;
  g.pub_total++;
  if (ts_in_window(ts)) {
    if (c->s_first == UINT64_MAX) c->s_first = s;
    g.exp_topic[t]++;
    g.pub_window++;
  }
  if (c->ring) {
    struct e2e_slot *sl = &c->ring[s % g.o.window];
    sl->ts = ts;
    sl->topic = t;
    sl->rem = (uint32_t)g.e2e_need[t];
    if (!sl->rem) { /* nobody to deliver to: complete at once */
      if (ts_in_window(ts)) g.e2e_done++;
      if (s == c->e2e_low) e2e_advance(c);
    }
  }
}

/* --http-pub: the same payload in a POST /api/publish (keep-alive; the
 * answers come in request order, like the WebSocket replies) */
static const char HPUB_A[] = "{\"topic\":\"";

static int http_pub_send_one(struct conn *c, uint64_t ts) {
  char head[256];
  uint32_t t;
  size_t hl = pub_head(c, ts, HPUB_A, LIT(HPUB_A), head, &t);
  size_t len = hl + g.padlen + LIT(PUB_E);
  char rh[512];
  int rn = snprintf(rh, sizeof(rh),
                    "POST /api/publish HTTP/1.1\r\nHost: %s\r\nAuthorization: apikey %s\r\n"
                    "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                    g.hostport, g.o.api_key, len);
  if (rn < 0 || (size_t)rn >= sizeof(rh)) return -1;
  char *p = out_reserve(c, (size_t)rn + len);
  if (!p) return -1;
  memcpy(p, rh, (size_t)rn);
  memcpy(p + rn, head, hl);
  memcpy(p + rn + hl, g.pad, g.padlen);
  memcpy(p + rn + hl + g.padlen, PUB_E, LIT(PUB_E));
  c->out[c->cur].len += (size_t)rn + len;
  pub_sent(c, t, ts);
  return 0;
}

static int pub_send_one(struct conn *c, uint64_t ts) {
  if (c->http) return http_pub_send_one(c, ts);
  char head[256];
  uint32_t t;
  size_t hl = pub_head(c, ts, PUB_A, LIT(PUB_A), head, &t);
  size_t len = hl + g.padlen + LIT(PUB_E);
  char *p = out_reserve(c, 14 + len);
  if (!p) return -1;
  uint8_t key[4];
  unsigned ko = 0;
  size_t fh = put_header(p, 0x1, len, key);
  char *d = p + fh;
  mask_copy(d, head, hl, key, &ko);
  mask_copy(d + hl, g.pad, g.padlen, key, &ko);
  mask_copy(d + hl + g.padlen, PUB_E, LIT(PUB_E), key, &ko);
  c->out[c->cur].len += fh + len;
  pub_sent(c, t, ts);
  return 0;
}

void pub_send_batch(struct conn *c, uint64_t n, uint64_t ts) {
  if (c->state != CS_READY) return;
  while (n--)
    if (pub_send_one(c, ts) < 0) break;
  conn_flush(c);
}

/* max-rate mode: keep the window of unacknowledged publishes (with --e2e:
 * of publishes not yet delivered to every subscriber) full */
void pub_pump(struct conn *c) {
  if (g.o.rate > 0 || c->state != CS_READY) return;
  if (g.phase != PH_WARMUP && g.phase != PH_MEASURE) return;
  uint64_t inflight = c->ring ? c->s_next - c->e2e_low : c->s_next - c->acks - c->errs;
  if (inflight >= g.o.window) return;
  uint64_t ts = now_ns();
  if (ts >= g.t_end) return;
  pub_send_batch(c, g.o.window - inflight, ts);
}

static void pub_reply(struct conn *c, const char *p, size_t len);
static const char *find_header(const char *head, size_t hlen, const char *name, size_t *vlen);

/* --http-pub: the answers in c->rbuf; 200 acknowledges the next publish,
 * anything else is an error. */
static void http_pub_input(struct conn *c) {
  size_t at = 0;
  for (;;) {
    char *end = memmem(c->rbuf + at, c->rlen - at, "\r\n\r\n", 4);
    if (!end) break;
    const char *h = c->rbuf + at;
    size_t hlen = (size_t)(end - h) + 4, vl;
    const char *v = find_header(h, hlen, "Content-Length", &vl);
    size_t blen = v ? (size_t)strtoull(v, NULL, 10) : 0;
    if (c->rlen - at < hlen + blen) break;
    if (hlen < 12 || memcmp(h, "HTTP/1.1 ", 9) != 0) {
      conn_fail(c, FAIL_PROTOCOL, "not an HTTP answer");
      return;
    }
    if (memcmp(h + 9, "200", 3) == 0) pub_reply(c, "\"published\"", 11);
    else pub_reply(c, h + hlen, blen ? blen : 12);
    at += hlen + blen;
  }
  if (at) memmove(c->rbuf, c->rbuf + at, c->rlen - at);
  c->rlen -= at;
}

static void pub_reply(struct conn *c, const char *p, size_t len) {
  /* replies come in order: the k-th reply answers sequence number k */
  uint64_t s = c->acks + c->errs;
  if (s >= c->s_next) {
    g.unexpected++;
    return;
  }
  int in_window = s >= c->s_first;
  if (memmem(p, len, "\"published\"", 11)) {
    c->acks++;
    if (in_window) g.acked_window++;
  } else if (memmem(p, len, "\"error\"", 7)) {
    c->errs++;
    g.pub_errors++;
    if (!g.first_error[0])
      snprintf(g.first_error, sizeof(g.first_error), "%.*s", (int)(len > 150 ? 150 : len), p);
    if (in_window) {
      g.err_window++;
      g.exp_topic[(s + c->idx) % g.o.topics]--;
    }
    if (c->ring) e2e_drop(c, s);
  } else {
    g.unexpected++;
  }
}

/* ---------------- deliveries ---------------- */

static int digits_u64(const char *q, const char *end, uint64_t *v, const char **after) {
  if (q >= end || *q < '0' || *q > '9') return -1;
  uint64_t x = 0;
  while (q < end && *q >= '0' && *q <= '9') x = x * 10 + (uint64_t)(*q++ - '0');
  *v = x;
  *after = q;
  return 0;
}

/* The number after key in [p, end): looked for first at `at` (where the
 * layout of the previous notification puts it; NULL: no guess), then
 * anywhere.  Returns where the key stands, or NULL. */
static const char *key_u64(const char *p, const char *end, const char *at, const char *key,
                           size_t klen, uint64_t *v, const char **after) {
  if (at && end - at > (ptrdiff_t)klen && memcmp(at, key, klen) == 0 &&
      digits_u64(at + klen, end, v, after) == 0)
    return at;
  const char *q = memmem(p, (size_t)(end - p), key, klen);
  if (!q || digits_u64(q + klen, end, v, after) < 0) return NULL;
  return q;
}

/* "seq" stands where it stood in this subscriber's previous notification
 * (one topic, one server). */
static int find_seq(struct conn *c, const char *p, const char *end, uint64_t *seq,
                    const char **after) {
  const char *q = key_u64(p, end, c->seq_at ? p + c->seq_at : NULL, "\"seq\":", 6, seq, after);
  if (!q) return -1;
  c->seq_at = (uint32_t)(q - p);
  return 0;
}

static void sub_notification(struct conn *c, const char *p, size_t len, uint64_t seq,
                             const char *after) {
  uint64_t now = g.rx_ns;
  const char *end = p + len;
  uint64_t ts;
  /* "ts" follows "seq" and its comma */
  if (!key_u64(after, end, after < end ? after + 1 : NULL, "\"ts\":", 5, &ts, &after)) {
    g.bad_msgs++;
    return;
  }
  g.deliv_total++;
  uint64_t pi = seq >> 32, s = seq & 0xffffffffu;
  if (pi >= g.o.pubs) {
    g.unexpected++;
    return;
  }
  struct conn *pc = &g.conns[g.o.subs + pi];
  if (pc->ring && c->e2e_counted && (s + pi) % g.o.topics == c->topic) e2e_delivered(pc, s, now);
  if (s < pc->s_first || s >= pc->s_next) {
    g.deliv_outside++;
    return;
  }
  if ((s + pi) % g.o.topics != c->topic) {
    g.unexpected++;
    return;
  }
  g.deliv_window++;
  hist_add(&g.lat, now > ts ? now - ts : 0);
  hist_add(&g.lat_read, g.rx_read_ns > ts ? g.rx_read_ns - ts : 0);
  if (!c->trk && !(c->trk = calloc(g.o.pubs, sizeof(struct track)))) return;
  struct track *t = &c->trk[pi];
  uint64_t m = s / g.o.topics;
  if (m >= t->hi) {
    uint64_t shift = m + 1 - t->hi;
    t->mask = (t->hi == 0 || shift >= 64) ? 1 : (t->mask << shift) | 1;
    t->hi = m + 1;
    c->uniq++;
    g.uniq_total++;
    return;
  }
  uint64_t d = t->hi - 1 - m;
  if (d >= 64 || (t->mask >> d) & 1) {
    g.dup++;
    return;
  }
  t->mask |= 1ull << d;
  c->uniq++;
  g.uniq_total++;
  g.reordered++;
}

static void on_message(struct conn *c, unsigned op, const char *p, size_t len) {
  if (op != 1) {
    g.unexpected++;
    return;
  }
  if (c->role == ROLE_PUB) {
    pub_reply(c, p, len);
    return;
  }
  /* a notification carries "seq" near its start; look no further than
   * needed for the usual layout, then anywhere */
  const char *end = p + len, *after;
  uint64_t seq;
  if (find_seq(c, p, end, &seq, &after) == 0) {
    sub_notification(c, p, len, seq, after);
    return;
  }
  if (memmem(p, len, "\"subscribed\"", 12)) {
    if (c->state == CS_SUBSCRIBING) {
      c->state = CS_READY;
      lg_on_ready(c);
    }
    return;
  }
  if (memmem(p, len, "\"error\"", 7)) {
    if (c->state == CS_SUBSCRIBING) {
      conn_fail(c, FAIL_SUBSCRIBE, "%.*s", (int)(len > 150 ? 150 : len), p);
      return;
    }
    g.bad_msgs++;
    return;
  }
  g.unexpected++;
}

static int inflate_msg(struct conn *c, const char *p, size_t len, const char **out,
                       size_t *outlen) {
  static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
  z_stream *z = c->zs;
  size_t have = 0;
  int ended = 0;
  for (int part = 0; part < 2; part++) {
    z->next_in = part ? tail : (const Bytef *)p;
    z->avail_in = part ? 4u : (uInt)len;
    for (;;) {
      if (zcap - have < 4096) {
        size_t nc = zcap ? zcap * 2 : 65536;
        if (nc > MAX_MESSAGE + 65536) return -1;
        char *q = realloc(zout, nc);
        if (!q) return -1;
        zout = q;
        zcap = nc;
      }
      z->next_out = (Bytef *)zout + have;
      z->avail_out = (uInt)(zcap - have);
      int rc = inflate(z, Z_SYNC_FLUSH);
      have = zcap - z->avail_out;
      if (rc == Z_STREAM_END) { /* a final block: the stream starts anew */
        ended = 1;
        break;
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR) return -1;
      /* with room left over, inflate has used up its input */
      if (z->avail_out != 0) break;
    }
    if (ended) break;
  }
  if (c->pmd_nct || ended) inflateReset(z);
  *out = zout;
  *outlen = have;
  return 0;
}

static void deliver(struct conn *c, unsigned op, int z, const char *p, size_t len) {
  if (z) {
    if (inflate_msg(c, p, len, &p, &len) < 0) {
      conn_fail(c, FAIL_PROTOCOL, "bad compressed message");
      return;
    }
    g.inflated++;
  }
  on_message(c, op, p, len);
}

static int msg_append(struct conn *c, const char *p, size_t len) {
  if (c->mlen + len > MAX_MESSAGE) return -1;
  if (c->mcap - c->mlen < len) {
    size_t cap = c->mcap ? c->mcap : 4096;
    while (cap - c->mlen < len) cap *= 2;
    char *q = realloc(c->msg, cap);
    if (!q) return -1;
    c->msg = q;
    c->mcap = cap;
  }
  memcpy(c->msg + c->mlen, p, len);
  c->mlen += len;
  return 0;
}

static void on_close_frame(struct conn *c, const char *p, size_t len) {
  c->close_rcvd = 1;
  unsigned code = len >= 2 ? ((unsigned)(uint8_t)p[0] << 8 | (uint8_t)p[1]) : 1000;
  if (!c->close_sent) {
    if (g.phase < PH_CLOSING) {
      g.server_closes++;
      note_end(c, FAIL_CLOSED, "server sent close");
      if (c->state == CS_DEAD) return;
    }
    char r[2] = {(char)(code >> 8), (char)code};
    queue_frame(c, 0x8, r, len >= 2 ? 2 : 0);
    c->close_sent = 1;
    conn_flush(c);
  }
  if (c->state != CS_DEAD) c->state = CS_CLOSING;
}

static void handle_frame(struct conn *c, uint8_t b0, const char *p, size_t len) {
  unsigned fin = b0 & 0x80, rsv1 = b0 & 0x40, op = b0 & 0x0f;
  if ((b0 & 0x30) || (rsv1 && (!c->pmd || op == 0 || op >= 8))) {
    conn_fail(c, FAIL_PROTOCOL, "frame with unexpected RSV bits");
    return;
  }
  if (op >= 8) {
    if (!fin || len > 125) {
      conn_fail(c, FAIL_PROTOCOL, "bad control frame");
      return;
    }
    if (op == 0x9) {
      g.pings++;
      if (!c->close_sent) queue_frame(c, 0xA, p, len);
    } else if (op == 0x8) {
      on_close_frame(c, p, len);
    } else if (op != 0xA) {
      conn_fail(c, FAIL_PROTOCOL, "unknown control opcode %u", op);
    }
    return;
  }
  if (op == 0) {
    if (!c->in_msg || msg_append(c, p, len) < 0) {
      conn_fail(c, FAIL_PROTOCOL, "bad continuation frame");
      return;
    }
    if (fin) {
      c->in_msg = 0;
      deliver(c, c->msg_op, c->msg_z, c->msg, c->mlen);
      c->mlen = 0;
    }
    return;
  }
  if ((op != 1 && op != 2) || c->in_msg) {
    conn_fail(c, FAIL_PROTOCOL, "unexpected opcode %u", op);
    return;
  }
  if (fin) {
    deliver(c, op, rsv1 != 0, p, len);
    return;
  }
  c->in_msg = 1;
  c->msg_op = (uint8_t)op;
  c->msg_z = rsv1 != 0;
  c->mlen = 0;
  if (msg_append(c, p, len) < 0) conn_fail(c, FAIL_PROTOCOL, "message too large");
}

/* Handles the complete frames in p[0, n); returns the bytes consumed and
 * sets c->rneed to the full size of a trailing incomplete frame (0 while
 * even its header is incomplete). */
static size_t ws_parse(struct conn *c, char *p, size_t n) {
  size_t off = 0;
  c->rneed = 0;
  while (n - off >= 2) {
    uint8_t b0 = (uint8_t)p[off], b1 = (uint8_t)p[off + 1];
    size_t hl = 2;
    uint64_t len = b1 & 0x7f;
    if (len == 126) {
      if (n - off < 4) break;
      len = (uint64_t)(uint8_t)p[off + 2] << 8 | (uint8_t)p[off + 3];
      hl = 4;
    } else if (len == 127) {
      if (n - off < 10) break;
      len = 0;
      for (int i = 0; i < 8; i++) len = len << 8 | (uint8_t)p[off + 2 + i];
      hl = 10;
    }
    if (b1 & 0x80) hl += 4;
    if (len > MAX_MESSAGE) {
      conn_fail(c, FAIL_PROTOCOL, "frame too large");
      return n;
    }
    if (n - off < hl + len) {
      c->rneed = hl + (size_t)len;
      break;
    }
    char *pl = p + off + hl;
    if (b1 & 0x80) { /* servers must not mask, but unmask anyway */
      uint8_t key[4];
      unsigned ko = 0;
      memcpy(key, pl - 4, 4);
      mask_copy(pl, pl, (size_t)len, key, &ko);
    }
    handle_frame(c, b0, pl, (size_t)len);
    off += hl + (size_t)len;
    if (c->state == CS_DEAD) return n;
  }
  return off;
}

static int rbuf_reserve(struct conn *c, size_t want) {
  if (c->rcap >= want) return 0;
  size_t cap = c->rcap ? c->rcap : 1024;
  while (cap < want) cap *= 2;
  char *q = realloc(c->rbuf, cap);
  if (!q) return -1;
  c->rbuf = q;
  c->rcap = cap;
  return 0;
}

static void process_rbuf(struct conn *c) {
  size_t used = ws_parse(c, c->rbuf, c->rlen);
  if (c->state == CS_DEAD) return;
  if (used) memmove(c->rbuf, c->rbuf + used, c->rlen - used);
  c->rlen -= used;
  if (!c->rlen && c->rcap > 65536) {
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
  }
}

/* ---------------- handshake ---------------- */

static void make_accept(const char *key, char out[29]) {
  char buf[64];
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned mdlen = 0;
  size_t kl = strlen(key);
  memcpy(buf, key, kl);
  memcpy(buf + kl, WS_GUID, sizeof(WS_GUID) - 1);
  EVP_Digest(buf, kl + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

/* finds header `name` in the response head; returns its trimmed value */
static const char *find_header(const char *head, size_t hlen, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *p = memchr(head, '\n', hlen);
  const char *end = head + hlen;
  while (p && p + 1 < end) {
    const char *line = p + 1;
    const char *eol = memchr(line, '\n', (size_t)(end - line));
    if (!eol) break;
    if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
      const char *v = line + nl + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    p = eol;
  }
  return NULL;
}

static int has_token(const char *v, size_t vl, const char *tok) {
  size_t tl = strlen(tok);
  for (size_t i = 0; i + tl <= vl; i++)
    if (strncasecmp(v + i, tok, tl) == 0) return 1;
  return 0;
}

static void handshake_input(struct conn *c) {
  char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
  if (!end) {
    if (c->rlen > 16384) conn_fail(c, FAIL_HANDSHAKE, "response head too large");
    return;
  }
  size_t hlen = (size_t)(end - c->rbuf) + 4;
  const char *h = c->rbuf;
  if (hlen < 12 || memcmp(h, "HTTP/1.1 101", 12) != 0) {
    const char *eol = memchr(h, '\r', hlen);
    conn_fail(c, FAIL_HANDSHAKE, "%.*s", (int)(eol - h > 100 ? 100 : eol - h), h);
    return;
  }
  size_t vl;
  const char *v = find_header(h, hlen, "Upgrade", &vl);
  if (!v || !has_token(v, vl, "websocket")) {
    conn_fail(c, FAIL_HANDSHAKE, "no Upgrade: websocket");
    return;
  }
  v = find_header(h, hlen, "Connection", &vl);
  if (!v || !has_token(v, vl, "upgrade")) {
    conn_fail(c, FAIL_HANDSHAKE, "no Connection: Upgrade");
    return;
  }
  char accept[29];
  make_accept(c->key, accept);
  v = find_header(h, hlen, "Sec-WebSocket-Accept", &vl);
  if (!v || vl != 28 || memcmp(v, accept, 28) != 0) {
    conn_fail(c, FAIL_HANDSHAKE, "bad Sec-WebSocket-Accept");
    return;
  }
  v = find_header(h, hlen, "Sec-WebSocket-Extensions", &vl);
  if (v) {
    if (!g.o.deflate || !has_token(v, vl, "permessage-deflate") || memchr(v, ',', vl)) {
      conn_fail(c, FAIL_HANDSHAKE, "unexpected extension %.*s", (int)(vl > 80 ? 80 : vl), v);
      return;
    }
    int bits = 15;
    const char *b = v;
    while ((b = memmem(b, vl - (size_t)(b - v), "server_max_window_bits=", 23))) {
      b += 23;
      if (b < v + vl && *b == '"') b++;
      int x = atoi(b);
      if (x >= 9 && x <= 15) bits = x;
    }
    c->pmd = 1;
    c->pmd_nct = (uint8_t)has_token(v, vl, "server_no_context_takeover");
    c->zs = calloc(1, sizeof(z_stream));
    if (!c->zs || inflateInit2(c->zs, -bits) != Z_OK) {
      free(c->zs);
      c->zs = NULL;
      conn_fail(c, FAIL_HANDSHAKE, "inflateInit2 failed");
      return;
    }
  } else if (g.o.deflate && g.established == 0 && g.errors_printed < 5) {
    g.errors_printed++;
    lg_log("note: server did not accept permessage-deflate");
  }
  c->ws = 1;
  hs_done(c);
  g.established++;
  memmove(c->rbuf, c->rbuf + hlen, c->rlen - hlen);
  c->rlen -= hlen;
  if (!c->rlen) { /* an idle connection keeps no read buffer */
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
  }
  if (c->role == ROLE_SUB) {
    char sub[300];
    int n = snprintf(sub, sizeof(sub), "{\"type\":\"subscribe\",\"topic\":\"%s\"}",
                     g.topic_name[c->topic]);
    c->state = CS_SUBSCRIBING;
    queue_frame(c, 0x1, sub, (size_t)n);
  } else {
    c->state = CS_READY;
    lg_on_ready(c);
  }
  if (c->state != CS_DEAD && c->rlen) process_rbuf(c);
  if (c->state != CS_DEAD) conn_flush(c);
  lg_open_more();
}

/* ---------------- libuv callbacks ---------------- */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  struct conn *c = hd->data;
  if (c->ws && c->rlen == 0) {
    *buf = uv_buf_init(rd_shared, sizeof(rd_shared));
    return;
  }
  size_t want;
  if (!c->ws) want = c->rlen + 4096;
  else if (c->rneed > c->rlen) want = c->rneed; /* exactly the rest of the frame */
  else want = c->rlen + 4096;                   /* the header is still incomplete */
  if (rbuf_reserve(c, want) < 0) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(want - c->rlen));
}

static void rx_switch(struct conn *c);

/* nread bytes (or an error) came in buf, from libuv or from rx_ready. */
static void got_bytes(struct conn *c, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) {
    if (c->close_rcvd || c->close_sent) {
      conn_close(c);
      return;
    }
    conn_fail(c, FAIL_CLOSED, "%s",
              nread == UV_EOF ? "server closed the connection" : uv_strerror((int)nread));
    return;
  }
  if (buf->base == rd_shared) {
    size_t n = (size_t)nread;
    size_t used = ws_parse(c, rd_shared, n);
    if (c->state == CS_DEAD) return;
    if (used < n) {
      size_t left = n - used;
      if (rbuf_reserve(c, left > c->rneed ? left : c->rneed) < 0) {
        conn_fail(c, FAIL_PROTOCOL, "out of memory");
        return;
      }
      memcpy(c->rbuf, rd_shared + used, left);
      c->rlen = left;
    }
  } else {
    c->rlen += (size_t)nread;
    if (c->http) http_pub_input(c);
    else if (!c->ws) handshake_input(c);
    else process_rbuf(c);
    if (c->state == CS_DEAD) return;
  }
  if (c->role == ROLE_PUB) pub_pump(c);
  else e2e_refill();
  conn_flush(c);
  if (c->role == ROLE_SUB && c->ready && !c->rx_direct && g.rx_epfd >= 0 && c->state == CS_READY)
    rx_switch(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = st->data;
  if (nread == 0 || c->state == CS_DEAD) return;
  g.rx_ns = g.rx_read_ns = now_ns();
  got_bytes(c, nread, buf);
}

/* ---------------- arrival times ----------------
 *
 * A notification's latency ends when its bytes reached the subscriber's
 * socket, as the kernel stamps them (SO_TIMESTAMPNS), not when this one
 * thread got round to reading that socket: with 1,000 subscribers of one
 * topic the last read ends milliseconds after the first however fast the
 * server is, because every read costs the loadgen a system call.  libuv
 * reads with read(2), which cannot return the stamp, so a subscriber that
 * is ready leaves libuv's reading for an epoll set of our own (one uv_poll)
 * and is read with recvmsg.  Writes stay libuv's.  --read-time keeps libuv
 * reading and ends latency at the read, as before; lat_read has that
 * figure in both modes. */

static void rx_switch(struct conn *c) {
  uv_os_fd_t fd;
  int on = 1;
  if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) != 0)
    return;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  uv_read_stop((uv_stream_t *)&c->tcp);
  if (epoll_ctl(g.rx_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    return;
  }
  c->rx_direct = 1;
}

/* Reads c until the kernel has nothing more (or it is closed). */
static void rx_drain(struct conn *c) {
  uv_os_fd_t fd;
  if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0) return;
  for (int rounds = 0; rounds < 32 && c->state != CS_DEAD && c->rx_direct; rounds++) {
    uv_buf_t buf;
    on_alloc((uv_handle_t *)&c->tcp, 0, &buf);
    if (!buf.base) {
      got_bytes(c, UV_ENOBUFS, &buf);
      return;
    }
    union {
      char b[CMSG_SPACE(sizeof(struct timespec))];
      struct cmsghdr align;
    } ctl;
    struct iovec iov = {buf.base, buf.len};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b)};
    ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    uint64_t now = now_ns();
    g.rx_ns = g.rx_read_ns = now;
    if (n > 0) {
      for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_TIMESTAMPNS) continue;
        struct timespec ts;
        memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
        int64_t real = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        int64_t mono = real - g.real_minus_mono;
        if (mono > 0 && (uint64_t)mono <= now) g.rx_ns = (uint64_t)mono;
        g.rx_stamped++;
      }
    }
    got_bytes(c, n > 0 ? n : n == 0 ? UV_EOF : -errno, &buf);
    if (n < (ssize_t)buf.len) return; /* the kernel had no more */
  }
}

static void on_rx_ready(uv_poll_t *h, int status, int events) {
  (void)h, (void)status, (void)events;
  struct epoll_event ev[256];
  int n = epoll_wait(g.rx_epfd, ev, 256, 0);
  for (int i = 0; i < n; i++) {
    struct conn *c = ev[i].data.ptr;
    if (c->state != CS_DEAD && c->rx_direct) rx_drain(c);
  }
}

int rx_start(void) {
  g.rx_epfd = -1;
  if (g.o.read_time) return 0;
  struct timespec r0, m, r1;
  clock_gettime(CLOCK_REALTIME, &r0);
  clock_gettime(CLOCK_MONOTONIC, &m);
  clock_gettime(CLOCK_REALTIME, &r1);
  int64_t real = ((int64_t)r0.tv_sec * 1000000000 + r0.tv_nsec) / 2 +
                 ((int64_t)r1.tv_sec * 1000000000 + r1.tv_nsec) / 2;
  g.real_minus_mono = real - ((int64_t)m.tv_sec * 1000000000 + m.tv_nsec);
  g.rx_epfd = epoll_create1(EPOLL_CLOEXEC);
  if (g.rx_epfd < 0) return -1;
  if (uv_poll_init(g.loop, &g.rx_poll, g.rx_epfd) != 0 ||
      uv_poll_start(&g.rx_poll, UV_READABLE, on_rx_ready) != 0) {
    close(g.rx_epfd);
    g.rx_epfd = -1;
    return -1;
  }
  return 0;
}

static void rx_closed(uv_handle_t *h) {
  (void)h;
  close(g.rx_epfd);
  g.rx_epfd = -1;
}

void rx_stop(void) {
  if (g.rx_epfd >= 0 && !uv_is_closing((uv_handle_t *)&g.rx_poll))
    uv_close((uv_handle_t *)&g.rx_poll, rx_closed);
}

static void on_connect(uv_connect_t *req, int status) {
  struct conn *c = req->data;
  if (status == UV_ECANCELED || c->state == CS_DEAD) return;
  if (status < 0) {
    conn_fail(c, FAIL_CONNECT, "%s", uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (c->role == ROLE_PUB && g.o.api_key) {
    /* an HTTP API publisher: nothing to negotiate */
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) {
      conn_fail(c, FAIL_CONNECT, "read: %s", uv_strerror(rc));
      return;
    }
    c->http = 1;
    hs_done(c);
    g.established++;
    c->state = CS_READY;
    lg_on_ready(c);
    lg_open_more();
    return;
  }
  unsigned char rnd[16];
  for (int i = 0; i < 16; i += 8) {
    uint64_t r = rng_next();
    memcpy(rnd + i, &r, 8);
  }
  EVP_EncodeBlock((unsigned char *)c->key, rnd, 16);
  char req_s[1024];
  int n = snprintf(req_s, sizeof(req_s),
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                   g.o.path, g.hostport, c->key,
                   g.o.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                 "client_max_window_bits\r\n"
                               : "");
  char *p = out_reserve(c, (size_t)n);
  if (!p) {
    conn_fail(c, FAIL_CONNECT, "out of memory");
    return;
  }
  memcpy(p, req_s, (size_t)n);
  c->out[c->cur].len += (size_t)n;
  c->state = CS_HANDSHAKE;
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(c, FAIL_CONNECT, "read: %s", uv_strerror(rc));
    return;
  }
  conn_flush(c);
}

void conn_start(struct conn *c) {
  uv_tcp_init(g.loop, &c->tcp);
  c->tcp.data = c;
  c->creq.data = c;
  c->s_first = UINT64_MAX;
  c->state = CS_CONNECTING;
  c->in_hs = 1;
  g.inflight_hs++;
  g.open_handles++;
  int rc = 0;
  if (g.o.nsrc) {
    rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&g.o.src[(c - g.conns) % g.o.nsrc], 0);
    if (rc < 0) {
      conn_fail(c, FAIL_CONNECT, "bind: %s", uv_strerror(rc));
      return;
    }
  }
  rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&g.addr, on_connect);
  if (rc < 0) conn_fail(c, FAIL_CONNECT, "%s", uv_strerror(rc));
}
