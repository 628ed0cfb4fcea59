#include "broadcast.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/sbuf.h"
#include "../common/utf8.h"
#include "bus.h"
#include "conn.h"
#include "../common/frame.h"
#include "pmd.h"
#include "recovery.h"
#include "slow.h"
#include "topics.h"
#include "worker.h"
#include "ws.h"

static const char pre[] = "{\"type\":\"notification\",\"topic\":\"";
static const char mid[] = "\",\"payload\":";

/* Encodes bytes that are not JSON as a JSON string; bytes that are not
 * UTF-8 become U+FFFD so the frame stays a valid text message. */
static char *as_json_string(const char *p, size_t n) {
  char *clean = malloc(n * 3 + 1), *o = clean;
  if (!clean) return NULL;
  size_t i = 0;
  while (i < n) {
    size_t ok = utf8_valid_prefix((const uint8_t *)p + i, n - i);
    memcpy(o, p + i, ok);
    o += ok;
    i += ok;
    if (i < n) {
      memcpy(o, "\xEF\xBF\xBD", 3);
      o += 3;
      i++;
    }
  }
  json_t *s = json_stringn(clean, (size_t)(o - clean));
  free(clean);
  char *out = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
  json_decref(s);
  return out;
}

static int is_valid_json(const char *p, size_t n) {
  json_error_t err;
  json_t *v = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  if (!v) return 0;
  json_decref(v);
  return 1;
}

/* ,"offset":<20 digits>,"epoch":"<32>" */
#define POS_MEMBERS_MAX (32 + 12 + BUS_EPOCH_MAX)

/* Writes the frame for notification parts into a new sbuf.  pos NULL: the
 * message has no place in a history, and the frame no "offset".  The first
 * message of an epoch also names its epoch, so that a client that
 * subscribed before the topic had any learns it. */
static struct sbuf *build_frame(const char *topic, size_t tlen, const char *payload, size_t plen,
                                const struct bus_pos *pos) {
  char off[POS_MEMBERS_MAX] = "";
  int ol = 0;
  if (pos && pos->offset == 1)
    ol = snprintf(off, sizeof(off), ",\"offset\":1,\"epoch\":\"%s\"", pos->epoch);
  else if (pos)
    ol = snprintf(off, sizeof(off), ",\"offset\":%llu", (unsigned long long)pos->offset);
  size_t jlen = sizeof(pre) - 1 + tlen + sizeof(mid) - 1 + plen + (size_t)ol + 1;
  struct sbuf *b = sbuf_new(FRAME_HEADER_MAX + jlen);
  if (!b) return NULL;
  size_t h = frame_header(b->data, FRAME_TEXT, 0, jlen);
  uint8_t *o = b->data + h;
  memcpy(o, pre, sizeof(pre) - 1);
  o += sizeof(pre) - 1;
  memcpy(o, topic, tlen);
  o += tlen;
  memcpy(o, mid, sizeof(mid) - 1);
  o += sizeof(mid) - 1;
  memcpy(o, payload, plen);
  o += plen;
  memcpy(o, off, (size_t)ol);
  o += ol;
  *o++ = '}';
  b->len = (size_t)(o - b->data);
  return b;
}

/* The frame of a notification whose payload may not be JSON (checked, and
 * sent as a JSON string if not). */
static struct sbuf *notification_frame(const char *topic, size_t tlen, const char *payload,
                                       size_t plen, int is_json, const struct bus_pos *pos) {
  char *enc = NULL;
  if (!is_json && !is_valid_json(payload, plen)) {
    enc = as_json_string(payload, plen);
    if (!enc) return NULL;
    payload = enc;
    plen = strlen(enc);
  }
  struct sbuf *b = build_frame(topic, tlen, payload, plen, pos);
  free(enc);
  return b;
}

static size_t header_len(const struct sbuf *b) {
  return b->data[1] < 126 ? 2 : b->data[1] == 126 ? 4 : 10;
}

char *broadcast_payload_json(const char *payload, size_t plen, size_t *len) {
  if (!is_valid_json(payload, plen)) {
    char *enc = as_json_string(payload, plen);
    if (enc) *len = strlen(enc);
    return enc;
  }
  char *out = malloc(plen + 1);
  if (!out) return NULL;
  memcpy(out, payload, plen);
  out[plen] = '\0';
  *len = plen;
  return out;
}

char *broadcast_notification(const char *topic, size_t tlen, const char *payload, size_t plen,
                             int is_json, const struct bus_pos *pos, size_t *len) {
  struct sbuf *b = notification_frame(topic, tlen, payload, plen, is_json, pos);
  if (!b) return NULL;
  size_t h = header_len(b);
  char *out = malloc(b->len - h + 1);
  if (out) {
    memcpy(out, b->data + h, b->len - h);
    out[b->len - h] = '\0';
    *len = b->len - h;
  }
  sbuf_unref(b);
  return out;
}

struct sbuf *broadcast_frame_for(struct conn *c, const char *topic, size_t tlen,
                                 const char *payload, size_t plen, int is_json,
                                 const struct bus_pos *pos) {
  struct worker *w = c->w;
  struct sbuf *plain = notification_frame(topic, tlen, payload, plen, is_json, pos);
  if (!plain) return NULL;
  size_t hdr = header_len(plain), jlen = plain->len - hdr;
  if (!c->pmd || w->cfg->no_compression || jlen < w->cfg->compression_threshold) return plain;
  struct sbuf *d = pmd_frame(&w->pmd, (int)c->pmd_bits, FRAME_TEXT, plain->data + hdr, jlen);
  if (!d) return plain;
  sbuf_unref(plain);
  return d;
}

size_t broadcast(struct worker *w, struct topic *t, const char *payload, size_t plen, int is_json,
                 const struct bus_pos *pos) {
  uint64_t offset = pos ? pos->offset : 0;
  uint64_t born_us = uv_hrtime() / 1000;
  struct sbuf *plain = notification_frame(t->name, t->len, payload, plen, is_json, pos);
  if (!plain) return 0;
  plain->born_us = born_us;
  /* Compressed forms are made on first need, once per window size (one in
   * practice): never once per subscriber. */
  struct sbuf *deflated[PMD_MAX_BITS + 1] = {0};
  size_t hdr = header_len(plain);
  size_t jlen = plain->len - hdr;
  int compress = !w->cfg->no_compression && jlen >= w->cfg->compression_threshold;
  size_t n = 0, extra_raw = 0;
  /* only a topic with history has subscriptions that resume (s->ext) or
   * were sent history (s->seen): the others never read those fields */
  int hist = t->ext != NULL;
  for (struct sub *s = t->subs; s; s = s->tnext) {
    struct conn *c = s->subscriber;
    if (!ws_can_send(c)) continue;
    if (hist && offset && offset <= s->seen) continue; /* it had this one from the history */
    struct sbuf *f = plain;
    if (compress && c->pmd) {
      unsigned bits = c->pmd_bits;
      if (!deflated[bits]) {
        deflated[bits] = pmd_frame(&w->pmd, (int)bits, FRAME_TEXT, plain->data + hdr, jlen);
        if (deflated[bits]) deflated[bits]->born_us = born_us;
      }
      if (deflated[bits]) f = deflated[bits];
    }
    if (hist && s->ext) { /* a resuming subscription: kept until its history is out */
      recovery_hold(s, f, offset);
      continue;
    }
    if (slow_skip(c)) continue; /* told later, with "missed" */
    if (c->missed) {
      int extra = slow_send_missed(c, plain->data + hdr, jlen, born_us);
      if (extra >= 0) {
        n++;
        extra_raw += (size_t)extra;
      }
      continue;
    }
    if (conn_send_ref(c, f) == 0) n++;
  }
  sbuf_unref(plain);
  for (int b = 0; b <= PMD_MAX_BITS; b++) sbuf_unref(deflated[b]);
  metric_add(w->m, M_DELIVERIES, n);
  metric_add(w->m, M_BYTES_OUT_RAW, n * jlen + extra_raw);
  return n;
}
