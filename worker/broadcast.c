#include "broadcast.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../common/sbuf.h"
#include "../common/utf8.h"
#include "conn.h"
#include "../common/frame.h"
#include "pmd.h"
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

/* Writes the frame for notification parts into a new sbuf. */
static struct sbuf *build_frame(const char *topic, size_t tlen, const char *payload,
                                size_t plen) {
  size_t jlen = sizeof(pre) - 1 + tlen + sizeof(mid) - 1 + plen + 1;
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
  *o++ = '}';
  b->len = (size_t)(o - b->data);
  return b;
}

char *broadcast_notification(const char *topic, size_t tlen, const char *payload, size_t plen,
                             int is_json, size_t *len) {
  char *enc = NULL;
  if (!is_json && !is_valid_json(payload, plen)) {
    enc = as_json_string(payload, plen);
    if (!enc) return NULL;
    payload = enc;
    plen = strlen(enc);
  }
  struct sbuf *b = build_frame(topic, tlen, payload, plen);
  free(enc);
  if (!b) return NULL;
  size_t h = b->data[1] < 126 ? 2 : b->data[1] == 126 ? 4 : 10;
  char *out = malloc(b->len - h + 1);
  if (out) {
    memcpy(out, b->data + h, b->len - h);
    out[b->len - h] = '\0';
    *len = b->len - h;
  }
  sbuf_unref(b);
  return out;
}

size_t broadcast(struct worker *w, const char *topic, size_t tlen, const char *payload,
                 size_t plen, int is_json) {
  uint64_t born_us = uv_hrtime() / 1000;
  struct topic *t = topics_find(&w->topics, topic, tlen);
  if (!t) return 0;
  char *enc = NULL;
  if (!is_json && !is_valid_json(payload, plen)) {
    enc = as_json_string(payload, plen);
    if (!enc) return 0;
    payload = enc;
    plen = strlen(enc);
  }
  struct sbuf *plain = build_frame(topic, tlen, payload, plen);
  free(enc);
  if (!plain) return 0;
  plain->born_us = born_us;
  /* Compressed forms are made on first need, once per window size (one in
   * practice): never once per subscriber. */
  struct sbuf *deflated[PMD_MAX_BITS + 1] = {0};
  size_t hdr = plain->data[1] < 126 ? 2 : plain->data[1] == 126 ? 4 : 10;
  size_t jlen = plain->len - hdr;
  int compress = !w->cfg->no_compression && jlen >= w->cfg->compression_threshold;
  size_t n = 0, extra_raw = 0;
  for (struct sub *s = t->subs; s; s = s->tnext) {
    struct conn *c = s->subscriber;
    if (!ws_can_send(c)) continue;
    if (slow_skip(c)) continue; /* told later, with "missed" */
    if (c->missed) {
      int extra = slow_send_missed(c, plain->data + hdr, jlen, born_us);
      if (extra >= 0) {
        n++;
        extra_raw += (size_t)extra;
      }
      continue;
    }
    struct sbuf *f = plain;
    if (compress && c->pmd) {
      unsigned bits = c->pmd_bits;
      if (!deflated[bits]) {
        deflated[bits] = pmd_frame(&w->pmd, (int)bits, FRAME_TEXT, plain->data + hdr, jlen);
        if (deflated[bits]) deflated[bits]->born_us = born_us;
      }
      if (deflated[bits]) f = deflated[bits];
    }
    if (conn_send_ref(c, f) == 0) n++;
  }
  sbuf_unref(plain);
  for (int b = 0; b <= PMD_MAX_BITS; b++) sbuf_unref(deflated[b]);
  metric_add(w->m, M_DELIVERIES, n);
  metric_add(w->m, M_BYTES_OUT_RAW, n * jlen + extra_raw);
  return n;
}
