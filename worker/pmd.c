#include "pmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/frame.h"

/* ---- negotiation ---- */

static size_t trim(const char **s, size_t n) {
  while (n && (**s == ' ' || **s == '\t')) (*s)++, n--;
  while (n && ((*s)[n - 1] == ' ' || (*s)[n - 1] == '\t')) n--;
  return n;
}

static int is_token(const char *s, size_t n, const char *lit) {
  return n == strlen(lit) && strncasecmp(s, lit, n) == 0;
}

/* Parses "8".."15" (optionally quoted); returns the value or -1. */
static int parse_bits(const char *v, size_t n) {
  if (n >= 2 && v[0] == '"' && v[n - 1] == '"') v++, n -= 2;
  if (n < 1 || n > 2) return -1;
  int x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    x = x * 10 + (v[i] - '0');
  }
  if (n == 2 && v[0] == '0') return -1;
  return x >= 8 && x <= 15 ? x : -1;
}

/* Checks one offer ("permessage-deflate; a; b=1"). */
static int accept_offer(const char *s, size_t n, struct pmd_params *p) {
  const char *end = s + n;
  const char *semi = memchr(s, ';', n);
  const char *name = s;
  size_t nl = trim(&name, (size_t)((semi ? semi : end) - s));
  if (!is_token(name, nl, "permessage-deflate")) return 0;
  int seen_snct = 0, seen_cnct = 0, seen_smwb = 0, seen_cmwb = 0;
  p->server_bits = PMD_MAX_BITS;
  while (semi) {
    const char *ps = semi + 1;
    semi = memchr(ps, ';', (size_t)(end - ps));
    const char *pe = semi ? semi : end;
    const char *eq = memchr(ps, '=', (size_t)(pe - ps));
    const char *k = ps;
    size_t kl = trim(&k, (size_t)((eq ? eq : pe) - ps));
    const char *v = eq ? eq + 1 : NULL;
    size_t vl = eq ? trim(&v, (size_t)(pe - v)) : 0;
    if (is_token(k, kl, "server_no_context_takeover")) {
      if (seen_snct++ || v) return 0;
    } else if (is_token(k, kl, "client_no_context_takeover")) {
      if (seen_cnct++ || v) return 0;
    } else if (is_token(k, kl, "server_max_window_bits")) {
      int b = v ? parse_bits(v, vl) : -1;
      /* zlib cannot deflate with a 256-byte window: decline 8 */
      if (seen_smwb++ || b < PMD_MIN_BITS) return 0;
      p->server_bits = b;
    } else if (is_token(k, kl, "client_max_window_bits")) {
      if (seen_cmwb++ || (v && parse_bits(v, vl) < 0)) return 0;
    } else {
      return 0; /* unknown parameter: decline this offer */
    }
  }
  return 1;
}

int pmd_negotiate(const char *offers, size_t len, struct pmd_params *p, char *resp,
                  size_t resplen) {
  const char *s = offers, *end = offers + len;
  while (s < end) {
    /* offers are comma-separated; parameters never contain commas here */
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *oe = comma ? comma : end;
    if (accept_offer(s, (size_t)(oe - s), p)) {
      int n;
      if (p->server_bits < PMD_MAX_BITS)
        n = snprintf(resp, resplen,
                     "permessage-deflate; server_no_context_takeover; "
                     "client_no_context_takeover; server_max_window_bits=%d",
                     p->server_bits);
      else
        n = snprintf(resp, resplen,
                     "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
      return n > 0 && (size_t)n < resplen;
    }
    s = comma ? comma + 1 : end;
  }
  return 0;
}

/* ---- compression ---- */

void pmd_init(struct pmd *z, size_t max_message) {
  memset(z, 0, sizeof(*z));
  z->max_message = max_message;
}

void pmd_free(struct pmd *z) {
  for (int b = 0; b <= PMD_MAX_BITS; b++)
    if (z->def_ready[b]) deflateEnd(&z->def[b]);
  if (z->inf_ready) inflateEnd(&z->inf);
  free(z->out);
  memset(z, 0, sizeof(*z));
}

struct sbuf *pmd_frame(struct pmd *z, int bits, int opcode, const uint8_t *payload, size_t len) {
  if (bits < PMD_MIN_BITS || bits > PMD_MAX_BITS) bits = PMD_MAX_BITS;
  z_stream *s = &z->def[bits];
  if (!z->def_ready[bits]) {
    /* memLevel 8 and level 6: zlib's defaults; raw deflate (negative bits) */
    if (deflateInit2(s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      return NULL;
    z->def_ready[bits] = 1;
  } else if (deflateReset(s) != Z_OK) { /* no context takeover */
    return NULL;
  }
  size_t bound = deflateBound(s, len) + 16;
  struct sbuf *b = sbuf_new(FRAME_HEADER_MAX + bound);
  if (!b) return NULL;
  s->next_in = (Bytef *)(uintptr_t)payload;
  s->avail_in = (uInt)len;
  s->next_out = b->data + FRAME_HEADER_MAX;
  s->avail_out = (uInt)bound;
  int rc = deflate(s, Z_SYNC_FLUSH);
  if ((rc != Z_OK && rc != Z_BUF_ERROR) || s->avail_in != 0) {
    sbuf_unref(b);
    return NULL;
  }
  size_t clen = bound - s->avail_out;
  /* RFC 7692 7.2.1: drop the 00 00 ff ff tail of the sync flush */
  if (clen >= 4 && memcmp(b->data + FRAME_HEADER_MAX + clen - 4, "\x00\x00\xff\xff", 4) == 0)
    clen -= 4;
  uint8_t hdr[FRAME_HEADER_MAX];
  size_t h = frame_header(hdr, opcode, 1, clen);
  /* put the header right before the payload, then slide to the start */
  memcpy(b->data + FRAME_HEADER_MAX - h, hdr, h);
  memmove(b->data, b->data + FRAME_HEADER_MAX - h, h + clen);
  b->len = h + clen;
  return b;
}

int pmd_inflate(struct pmd *z, const uint8_t *in, size_t len, const uint8_t **out, size_t *outlen) {
  if (!z->inf_ready) {
    if (inflateInit2(&z->inf, -PMD_MAX_BITS) != Z_OK) return PMD_ENOMEM;
    z->inf_ready = 1;
  } else if (inflateReset(&z->inf) != Z_OK) {
    return PMD_ECORRUPT;
  }
  if (!z->out && !(z->out = malloc(z->max_message + 1))) return PMD_ENOMEM;
  static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
  z_stream *s = &z->inf;
  /* one spare byte of room tells "exactly at the limit" from "over it" */
  s->next_out = z->out;
  s->avail_out = (uInt)(z->max_message + 1);
  for (int pass = 0; pass < 2; pass++) {
    s->next_in = (Bytef *)(uintptr_t)(pass == 0 ? in : tail);
    s->avail_in = (uInt)(pass == 0 ? len : sizeof(tail));
    while (s->avail_in > 0) {
      int rc = inflate(s, Z_SYNC_FLUSH);
      if (s->avail_out == 0) return PMD_ETOOBIG;
      if (rc == Z_STREAM_END) break;
      if (rc == Z_BUF_ERROR) break;
      if (rc != Z_OK) return PMD_ECORRUPT;
    }
  }
  *out = z->out;
  *outlen = z->max_message + 1 - s->avail_out;
  return PMD_OK;
}
