#include "slow.h"

#include <stdio.h>
#include <string.h>

#include "../common/frame.h"
#include "../common/log.h"
#include "../common/sbuf.h"
#include "conn.h"
#include "worker.h"
#include "ws.h"

#define HARD_LIMIT_FACTOR 4
#define HARD_LIMIT_EXTRA (1u << 20)

int slow_skip(struct conn *c) {
  if (c->q.bytes < c->w->cfg->max_queued_bytes) return 0;
  if (!c->over_since) c->over_since = uv_now(c->w->loop) | 1; /* 0 means "under" */
  c->missed++;
  metric_add(c->w->m, M_SLOW_DROPPED, 1);
  return 1;
}

int slow_send_missed(struct conn *c, const uint8_t *json, size_t jlen, uint64_t born_us) {
  char tail[32];
  int tl = snprintf(tail, sizeof(tail), ",\"missed\":%u}", c->missed);
  size_t len = jlen - 1 + (size_t)tl;
  struct sbuf *b = sbuf_new(FRAME_HEADER_MAX + len);
  if (!b) return -1;
  size_t h = frame_header(b->data, FRAME_TEXT, 0, len);
  memcpy(b->data + h, json, jlen - 1);
  memcpy(b->data + h + jlen - 1, tail, (size_t)tl);
  b->len = h + len;
  b->born_us = born_us;
  int rc = conn_send_ref(c, b);
  sbuf_unref(b);
  if (rc < 0) return -1;
  c->missed = 0;
  return tl - 1;
}

int slow_over_hard_limit(const struct conn *c) {
  return c->q.bytes > c->w->cfg->max_queued_bytes * HARD_LIMIT_FACTOR + HARD_LIMIT_EXTRA;
}

void slow_after_flush(struct conn *c) {
  size_t cap = c->w->cfg->max_queued_bytes;
  if (c->q.bytes < cap) c->over_since = 0;
  if (c->read_paused && !c->read_held && c->q.bytes < cap / 2) conn_read_pause(c, 0);
  else if (!c->read_paused && c->q.bytes >= cap && c->state != CONN_DRAINING) conn_read_pause(c, 1);
}

/* Drops what was not started, sends close 1013 and drains. */
static void disconnect(struct conn *c) {
  /* keep what the kernel has started on: the in-flight write, or a
   * partly written first entry */
  uint32_t keep = c->inflight;
  if (keep == 0 && c->q.count > 0 && c->q.ring[c->q.head & (c->q.cap - 1)].off > 0) keep = 1;
  outq_truncate(&c->q, keep);
  log_info("slow_disconnect",
           "conn %llu %s: slow subscriber over %zu queued bytes for %ds: disconnecting (1013)",
           (unsigned long long)c->id, c->peer, c->w->cfg->max_queued_bytes, c->w->cfg->slow_grace);
  metric_add(c->w->m, M_SLOW_DISCONNECTS, 1);
  ws_close(c, CLOSE_TRY_AGAIN_LATER, "too slow: queued data over the limit");
}

void slow_tick(struct conn *c, uint64_t now) {
  const struct config *cfg = c->w->cfg;
  if (cfg->slow_disconnect && c->over_since &&
      now >= c->over_since + (uint64_t)cfg->slow_grace * 1000)
    disconnect(c);
}
