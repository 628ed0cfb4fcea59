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
  int dup_key; /* Sec-WebSocket-Key appeared more than once */
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

/* 1 when an If-None-Match value (RFC 9110 section 13.1.2) matches etag, a
 * strong entity tag written with its quotes ("\"abc\""): the value is "*" or
 * a comma-separated list holding that tag, weak (W/"abc") or not, since
 * If-None-Match compares weakly.  0 for no match or a malformed list (a
 * malformed list is answered in full, never with 304). */
int http_etag_match(struct http_str inm, const char *etag);

#endif
