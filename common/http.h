/* http.h - the HTTP/1.1 request parser and the WebSocket upgrade check.
 *
 * No sockets, no allocation: http_parse_request() reads a byte buffer and
 * fills a struct whose strings point into that buffer, so the request is
 * valid only as long as the caller keeps the buffer.  Shaped like
 * picohttpparser: it returns the number of bytes of the request head
 * (request line + headers + empty line), HTTP_INCOMPLETE when more bytes are
 * needed, or HTTP_EMALFORMED.
 */
#ifndef TIDINGS_HTTP_H
#define TIDINGS_HTTP_H

#include <stddef.h>

#define HTTP_INCOMPLETE (-2)
#define HTTP_EMALFORMED (-1)
#define HTTP_MAX_HEADERS 100

struct http_str {
  const char *p;
  size_t n;
};

struct http_request {
  struct http_str method;
  struct http_str target; /* path and query, as sent */
  struct http_str path;   /* target without the query */
  struct http_str query;  /* after '?', empty if none */
  int minor_version;      /* HTTP/1.x */
  int nheaders;
  /* headers the server acts on; n == 0 when absent */
  struct http_str host, upgrade, connection, ws_key, ws_version, origin, ws_protocol, ws_extensions,
      authorization, if_none_match;
  /* ... and the body's framing and type (the HTTP API reads bodies) */
  struct http_str content_length, transfer_encoding, content_type, expect;
  int dup_key;    /* Sec-WebSocket-Key appeared more than once */
  int dup_length; /* Content-Length appeared more than once */
  int dup_te;     /* Transfer-Encoding appeared more than once */
};

/* Parses buf[0..len).  Returns the length of the request head (> 0),
 * HTTP_INCOMPLETE or HTTP_EMALFORMED. */
int http_parse_request(const char *buf, size_t len, struct http_request *req);

/* 1 when the comma-separated header value contains token (case-insensitive). */
int http_has_token(struct http_str value, const char *token);

/* Checks a parsed request against RFC 6455 section 4.2.1.  Returns 0 when it
 * is a valid WebSocket upgrade, else the HTTP status to answer: 400 for a
 * malformed upgrade, 405 for a method other than GET, 426 for a missing or
 * unsupported Sec-WebSocket-Version (answered with "Sec-WebSocket-Version:
 * 13").  *why is set to a short static reason. */
int http_check_upgrade(const struct http_request *req, const char **why);

/* 1 when the request asks for a protocol upgrade to websocket at all. */
int http_wants_websocket(const struct http_request *req);

/* Writes the 28-byte base64 Sec-WebSocket-Accept value for key plus a NUL
 * into out[29]. */
void http_accept_key(struct http_str key, char out[29]);

/* Formats a complete response with Content-Length and "Connection: close"
 * into out.  extra_headers (may be NULL) is inserted verbatim and must end
 * in CRLF.  Returns the length, or -1 if out is too small. */
int http_format_response(char *out, size_t outlen, int status, const char *content_type,
                         const char *extra_headers, const char *body);

const char *http_reason(int status);

/* ---- requests with a body (the HTTP API) ----
 * Pure functions on a parsed head: no sockets, no allocation. */

enum http_body_kind { HTTP_BODY_NONE, HTTP_BODY_LENGTH, HTTP_BODY_CHUNKED };

struct http_body {
  enum http_body_kind kind;
  unsigned long long length; /* HTTP_BODY_LENGTH: the Content-Length */
};

/* How the request's body is delimited (RFC 9112 section 6): chunked when
 * Transfer-Encoding is exactly "chunked" (case-insensitive), else
 * Content-Length (one value of digits; a repeated header is refused, since
 * a proxy in front might have picked the other one), else none.
 * Returns 0, or HTTP_EMALFORMED when the body cannot be delimited safely:
 * both headers, a Transfer-Encoding other than chunked, a bad or repeated
 * Content-Length, a length beyond 2^53.  The caller must then close the
 * connection after its answer. */
int http_body_framing(const struct http_request *req, struct http_body *body);

/* 1 when the connection stays open after the answer: HTTP/1.1 unless
 * "Connection: close", HTTP/1.0 only with "Connection: keep-alive". */
int http_keep_alive(const struct http_request *req);

/* 1 when the media type of a Content-Type value (before any ';'
 * parameters, case-insensitive, optional whitespace trimmed) is type. */
int http_media_type_is(struct http_str content_type, const char *type);

/* 1 when the request carries "Expect: 100-continue". */
int http_expects_continue(const struct http_request *req);

/* Finds the parameter name in a query string (a=1&b=2) and writes its
 * value, percent-decoded ('+' is a space), into out[0..cap) with a NUL
 * after it (so cap must leave room for it).  Returns the decoded length,
 * HTTP_ENOTFOUND, or HTTP_EMALFORMED (a bad %-escape, or a value that does
 * not fit).  The first occurrence wins. */
#define HTTP_ENOTFOUND (-3)
int http_query_param(struct http_str query, const char *name, char *out, size_t cap);

/* A chunked body decoder (RFC 9112 section 7.1) that keeps its state
 * between calls, so the body may arrive in pieces of any size.  Chunk
 * extensions are skipped (at most HTTP_CHUNK_LINE_MAX bytes per size line),
 * trailer fields are skipped (at most HTTP_TRAILER_MAX bytes in all).
 * Zero-initialize the struct before the first call. */
#define HTTP_CHUNK_LINE_MAX 1024
#define HTTP_TRAILER_MAX 8192
struct http_chunked {
  int state;
  int digits;              /* hex digits of the current size */
  unsigned long long left; /* data bytes left in the current chunk */
  size_t line;             /* bytes of the current size or trailer line */
  size_t trailer;          /* bytes of trailer fields so far */
  int done;                /* the last chunk and trailers are consumed */
};

/* Consumes src[0..len) up to the end of the body and appends the data
 * bytes to dst (*dlen bytes there already, dcap in all; dst may be NULL to
 * discard the data, then only *dlen counts, up to dcap).  Returns the
 * number of bytes of src consumed, or HTTP_EMALFORMED.  Fewer than len
 * are consumed when the body ended (st->done is then set and the rest
 * belongs to the next request) or when dst is full (*dlen == dcap and
 * data remains: make room and call again with the rest, or give up). */
long http_chunked_decode(struct http_chunked *st, const char *src, size_t len, char *dst,
                         size_t *dlen, size_t dcap);

/* Formats a response head: status line, Content-Type (when ctype is not
 * NULL), Content-Length, extra_headers (NULL or CRLF-terminated), and
 * "Connection: close" when close is set, then the empty line.  Returns the
 * length, or -1 when out is too small. */
int http_format_head(char *out, size_t outlen, int status, const char *ctype,
                     unsigned long long content_length, const char *extra_headers, int close);

/* 1 when an If-None-Match value (RFC 9110 section 13.1.2) matches etag, a
 * strong entity tag written with its quotes ("\"abc\""): the value is "*" or
 * a comma-separated list holding that tag, weak (W/"abc") or not, since
 * If-None-Match compares weakly.  0 for no match or a malformed list (a
 * malformed list is answered in full, never with 304). */
int http_etag_match(struct http_str inm, const char *etag);

#endif
