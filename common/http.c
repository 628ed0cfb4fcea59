#include "http.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL); /* strchr finds the NUL */
}

static int streq_ci(struct http_str s, const char *lit) {
  size_t n = strlen(lit);
  return s.n == n && strncasecmp(s.p, lit, n) == 0;
}

/* Finds the end of the head ("\r\n\r\n"); returns its length or 0. */
static size_t head_length(const char *buf, size_t len) {
  for (size_t i = 3; i < len; i++)
    if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
      return i + 1;
  return 0;
}

static void set_header(struct http_request *req, struct http_str name, struct http_str value) {
  struct {
    const char *name;
    struct http_str *field;
  } known[] = {
      {"host", &req->host},
      {"upgrade", &req->upgrade},
      {"connection", &req->connection},
      {"sec-websocket-key", &req->ws_key},
      {"sec-websocket-version", &req->ws_version},
      {"origin", &req->origin},
      {"sec-websocket-protocol", &req->ws_protocol},
      {"sec-websocket-extensions", &req->ws_extensions},
      {"authorization", &req->authorization},
      {"content-length", &req->content_length},
      {"transfer-encoding", &req->transfer_encoding},
      {"content-type", &req->content_type},
      {"expect", &req->expect},
      {"if-none-match", &req->if_none_match},
  };
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
    if (!streq_ci(name, known[i].name)) continue;
    struct http_str *f = known[i].field;
    if (f->p) {
      if (f == &req->ws_key) req->dup_key = 1;
      else if (f == &req->content_length) req->dup_length = 1;
      else if (f == &req->transfer_encoding) req->dup_te = 1;
    }
    /* Repeated list headers (Connection, extensions, protocols) are kept as
     * the first occurrence; clients send them once in practice. */
    if (!f->p) *f = value;
    return;
  }
}

int http_parse_request(const char *buf, size_t len, struct http_request *req) {
  memset(req, 0, sizeof(*req));
  size_t head = head_length(buf, len);
  if (!head) {
    /* Reject garbage early instead of waiting for 8 KiB of it. */
    for (size_t i = 0; i < len && buf[i] != ' '; i++)
      if (!is_tchar((unsigned char)buf[i])) return HTTP_EMALFORMED;
    return HTTP_INCOMPLETE;
  }
  const char *p = buf, *end = buf + head - 2; /* end: the final CRLF */

  /* request line: method SP target SP HTTP/1.x CRLF */
  const char *s = p;
  while (p < end && is_tchar((unsigned char)*p)) p++;
  if (p == s || p >= end || *p != ' ') return HTTP_EMALFORMED;
  req->method = (struct http_str){s, (size_t)(p - s)};
  s = ++p;
  while (p < end && (unsigned char)*p > ' ' && *p != 0x7f) p++;
  if (p == s || p >= end || *p != ' ') return HTTP_EMALFORMED;
  req->target = (struct http_str){s, (size_t)(p - s)};
  p++;
  if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || p[7] < '0' || p[7] > '9' || p[8] != '\r' ||
      p[9] != '\n')
    return HTTP_EMALFORMED;
  req->minor_version = p[7] - '0';
  p += 10;
  const char *q = memchr(req->target.p, '?', req->target.n);
  if (q) {
    req->path = (struct http_str){req->target.p, (size_t)(q - req->target.p)};
    req->query = (struct http_str){q + 1, req->target.n - req->path.n - 1};
  } else {
    req->path = req->target;
  }

  /* header fields: name ":" OWS value OWS CRLF */
  while (p < end) {
    s = p;
    while (p < end && is_tchar((unsigned char)*p)) p++;
    if (p == s || p >= end || *p != ':') return HTTP_EMALFORMED; /* also obs-fold */
    struct http_str name = {s, (size_t)(p - s)};
    p++;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    s = p;
    while (p < end && *p != '\r') {
      unsigned char c = (unsigned char)*p;
      if ((c < 0x20 && c != '\t') || c == 0x7f) return HTTP_EMALFORMED;
      p++;
    }
    if (p >= end || p[1] != '\n') return HTTP_EMALFORMED;
    const char *ve = p;
    while (ve > s && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    if (++req->nheaders > HTTP_MAX_HEADERS) return HTTP_EMALFORMED;
    set_header(req, name, (struct http_str){s, (size_t)(ve - s)});
    p += 2;
  }
  return (int)head;
}

int http_has_token(struct http_str v, const char *token) {
  size_t tl = strlen(token), i = 0;
  while (i < v.n) {
    while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ',')) i++;
    size_t st = i;
    while (i < v.n && v.p[i] != ',') i++;
    size_t e = i;
    while (e > st && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t')) e--;
    if (e - st == tl && strncasecmp(v.p + st, token, tl) == 0) return 1;
  }
  return 0;
}

int http_wants_websocket(const struct http_request *req) {
  return req->upgrade.p != NULL || req->ws_key.p != NULL || req->ws_version.p != NULL;
}

/* Decodes base64 strictly: the Sec-WebSocket-Key must be exactly 24
 * characters that decode to 16 bytes. */
static int key_valid(struct http_str key) {
  if (key.n != 24 || key.p[22] != '=' || key.p[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++) {
    char c = key.p[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
          c == '/'))
      return 0;
  }
  /* the last data character carries 2 bits; the 4 unused bits must be 0 */
  const char *tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const char *pos = strchr(tbl, key.p[21]);
  return pos && ((pos - tbl) & 0x0f) == 0;
}

int http_check_upgrade(const struct http_request *req, const char **why) {
  if (req->method.n != 3 || memcmp(req->method.p, "GET", 3) != 0) {
    *why = "method must be GET";
    return 405;
  }
  if (req->minor_version < 1) {
    *why = "HTTP/1.1 required";
    return 400;
  }
  if (!req->host.p || req->host.n == 0) {
    *why = "missing Host";
    return 400;
  }
  if (!http_has_token(req->upgrade, "websocket")) {
    *why = "Upgrade must be websocket";
    return 400;
  }
  if (!http_has_token(req->connection, "upgrade")) {
    *why = "Connection must include upgrade";
    return 400;
  }
  if (!req->ws_version.p || req->ws_version.n != 2 || memcmp(req->ws_version.p, "13", 2) != 0) {
    *why = "Sec-WebSocket-Version must be 13";
    return 426;
  }
  if (!req->ws_key.p || req->dup_key || !key_valid(req->ws_key)) {
    *why = "bad Sec-WebSocket-Key";
    return 400;
  }
  *why = "ok";
  return 0;
}

void http_accept_key(struct http_str key, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char md[SHA_DIGEST_LENGTH];
  char in[64 + sizeof(guid)];
  size_t n = key.n > 64 ? 64 : key.n;
  memcpy(in, key.p, n);
  memcpy(in + n, guid, sizeof(guid) - 1);
  SHA1((const unsigned char *)in, n + sizeof(guid) - 1, md);
  EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
  out[28] = '\0';
}

const char *http_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

int http_format_response(char *out, size_t outlen, int status, const char *ctype, const char *extra,
                         const char *body) {
  size_t blen = body ? strlen(body) : 0;
  int n = snprintf(out, outlen,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n%s",
                   status, http_reason(status), ctype ? ctype : "text/plain", blen,
                   extra ? extra : "", body ? body : "");
  if (n < 0 || (size_t)n >= outlen) return -1;
  return n;
}

/* ---- requests with a body ---- */

/* Content-Length: 1*DIGIT, at most 2^53 (no client sends more, and the
 * value stays exact in every JSON number and double). */
#define HTTP_LENGTH_MAX (1ULL << 53)

int http_body_framing(const struct http_request *req, struct http_body *body) {
  body->kind = HTTP_BODY_NONE;
  body->length = 0;
  if (req->transfer_encoding.p) {
    /* chunked alone: another coding (or a list) cannot be delimited by us,
     * and both headers together are how requests are smuggled */
    if (req->dup_te || req->content_length.p || !streq_ci(req->transfer_encoding, "chunked"))
      return HTTP_EMALFORMED;
    body->kind = HTTP_BODY_CHUNKED;
    return 0;
  }
  if (!req->content_length.p) return 0;
  struct http_str v = req->content_length;
  if (req->dup_length || v.n == 0 || v.n > 16) return HTTP_EMALFORMED;
  unsigned long long n = 0;
  for (size_t i = 0; i < v.n; i++) {
    if (v.p[i] < '0' || v.p[i] > '9') return HTTP_EMALFORMED;
    n = n * 10 + (unsigned long long)(v.p[i] - '0');
  }
  if (n > HTTP_LENGTH_MAX) return HTTP_EMALFORMED;
  body->kind = HTTP_BODY_LENGTH;
  body->length = n;
  return 0;
}

int http_keep_alive(const struct http_request *req) {
  if (http_has_token(req->connection, "close")) return 0;
  return req->minor_version >= 1 || http_has_token(req->connection, "keep-alive");
}

int http_media_type_is(struct http_str ct, const char *type) {
  if (!ct.p) return 0;
  size_t i = 0, e;
  while (i < ct.n && (ct.p[i] == ' ' || ct.p[i] == '\t')) i++;
  for (e = i; e < ct.n && ct.p[e] != ';';) e++;
  while (e > i && (ct.p[e - 1] == ' ' || ct.p[e - 1] == '\t')) e--;
  return streq_ci((struct http_str){ct.p + i, e - i}, type);
}

int http_expects_continue(const struct http_request *req) {
  return req->expect.p && streq_ci(req->expect, "100-continue");
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int http_query_param(struct http_str q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name), i = 0;
  while (i < q.n) {
    size_t st = i;
    while (i < q.n && q.p[i] != '&') i++;
    /* q.p[st..i) is one name[=value] pair */
    size_t eq = st;
    while (eq < i && q.p[eq] != '=') eq++;
    if (eq - st == nl && memcmp(q.p + st, name, nl) == 0) {
      size_t n = 0;
      for (size_t k = eq < i ? eq + 1 : i; k < i; k++) {
        char c = q.p[k];
        if (c == '%') {
          int hi = k + 2 < i ? hexval(q.p[k + 1]) : -1, lo = hi >= 0 ? hexval(q.p[k + 2]) : -1;
          if (lo < 0) return HTTP_EMALFORMED;
          c = (char)(hi * 16 + lo);
          k += 2;
        } else if (c == '+') {
          c = ' ';
        }
        if (n + 1 >= cap) return HTTP_EMALFORMED;
        out[n++] = c;
      }
      if (cap == 0) return HTTP_EMALFORMED;
      out[n] = '\0';
      return (int)n;
    }
    i++; /* past the '&' */
  }
  return HTTP_ENOTFOUND;
}

/* The decoder's states: where in the chunked framing the next byte is. */
enum {
  CH_SIZE,    /* hex digits of a chunk size */
  CH_EXT,     /* after the size: optional whitespace and ;extensions up to CR */
  CH_SIZE_LF, /* the LF after the size line's CR */
  CH_DATA,    /* chunk data */
  CH_DATA_CR, /* the CRLF after the data */
  CH_DATA_LF,
  CH_TRAILER,      /* start of a trailer line (or the final CRLF) */
  CH_TRAILER_LINE, /* inside a trailer field line */
  CH_TRAILER_LF,   /* the LF after a trailer line's CR */
  CH_END_LF,       /* the LF of the final empty line */
};

long http_chunked_decode(struct http_chunked *st, const char *src, size_t len, char *dst,
                         size_t *dlen, size_t dcap) {
  size_t i = 0;
  while (i < len && !st->done) {
    char c = src[i];
    switch (st->state) {
      case CH_SIZE: {
        int h = hexval(c);
        if (h >= 0) {
          /* 15 hex digits (2^60) are more than any body we accept */
          if (++st->digits > 15) return HTTP_EMALFORMED;
          st->left = st->left * 16 + (unsigned long long)h;
          i++;
          break;
        }
        if (st->digits == 0) return HTTP_EMALFORMED;
        st->state = CH_EXT;
        st->line = 0;
        break; /* the same byte again, in CH_EXT */
      }
      case CH_EXT:
        if (c == '\r') {
          st->state = CH_SIZE_LF;
        } else if (c == '\n' || (c != '\t' && ((unsigned char)c < 0x20 || c == 0x7f)) ||
                   ++st->line > HTTP_CHUNK_LINE_MAX) {
          return HTTP_EMALFORMED;
        }
        i++;
        break;
      case CH_SIZE_LF:
        if (c != '\n') return HTTP_EMALFORMED;
        i++;
        st->digits = 0;
        if (st->left == 0) {
          st->state = CH_TRAILER;
          st->trailer = 0;
        } else {
          st->state = CH_DATA;
        }
        break;
      case CH_DATA: {
        size_t take = len - i;
        if ((unsigned long long)take > st->left) take = (size_t)st->left;
        if (take > dcap - *dlen) take = dcap - *dlen;
        if (take == 0) return (long)i; /* dst is full */
        if (dst) memcpy(dst + *dlen, src + i, take);
        *dlen += take;
        st->left -= take;
        i += take;
        if (st->left == 0) st->state = CH_DATA_CR;
        break;
      }
      case CH_DATA_CR:
        if (c != '\r') return HTTP_EMALFORMED;
        st->state = CH_DATA_LF;
        i++;
        break;
      case CH_DATA_LF:
        if (c != '\n') return HTTP_EMALFORMED;
        st->state = CH_SIZE;
        i++;
        break;
      case CH_TRAILER:
        if (c == '\r') {
          st->state = CH_END_LF;
          i++;
          break;
        }
        st->state = CH_TRAILER_LINE;
        break;
      case CH_TRAILER_LINE:
        if (++st->trailer > HTTP_TRAILER_MAX) return HTTP_EMALFORMED;
        if (c == '\r') st->state = CH_TRAILER_LF;
        else if (c == '\n' || (c != '\t' && ((unsigned char)c < 0x20 || c == 0x7f)))
          return HTTP_EMALFORMED;
        i++;
        break;
      case CH_TRAILER_LF:
        if (c != '\n') return HTTP_EMALFORMED;
        st->state = CH_TRAILER;
        i++;
        break;
      case CH_END_LF:
        if (c != '\n') return HTTP_EMALFORMED;
        st->done = 1;
        i++;
        break;
      default: return HTTP_EMALFORMED;
    }
  }
  return (long)i;
}

int http_format_head(char *out, size_t outlen, int status, const char *ctype,
                     unsigned long long content_length, const char *extra, int close) {
  int n = snprintf(out, outlen, "HTTP/1.1 %d %s\r\n%s%s%sContent-Length: %llu\r\n%s%s\r\n", status,
                   http_reason(status), ctype ? "Content-Type: " : "", ctype ? ctype : "",
                   ctype ? "\r\n" : "", content_length, extra ? extra : "",
                   close ? "Connection: close\r\n" : "");
  if (n < 0 || (size_t)n >= outlen) return -1;
  return n;
}

static int is_ows(char ch) { return ch == ' ' || ch == '\t'; }

int http_etag_match(struct http_str inm, const char *etag) {
  const char *p = inm.p, *end = inm.p + inm.n;
  size_t elen = strlen(etag);
  while (p < end && is_ows(*p)) p++;
  if (p < end && *p == '*') {
    for (p++; p < end && is_ows(*p); p++) {
    }
    return p == end;
  }
  int found = 0;
  while (p < end) {
    if (*p == ',' || is_ows(*p)) { /* empty list elements are allowed */
      p++;
      continue;
    }
    if (end - p >= 2 && p[0] == 'W' && p[1] == '/') p += 2;
    /* entity-tag = [ W/ ] DQUOTE *etagc DQUOTE */
    if (p >= end || *p != '"') return 0;
    const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (!q) return 0;
    size_t n = (size_t)(q + 1 - p);
    if (n == elen && memcmp(p, etag, n) == 0) found = 1;
    p = q + 1;
    while (p < end && is_ows(*p)) p++;
    if (p < end && *p != ',') return 0;
  }
  return found;
}
