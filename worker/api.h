/* api.h - the HTTP API under /api/: publish, broadcast, history, topics,
 * disconnect, for backends that would rather make an HTTP request than
 * hold a WebSocket.
 *
 * It is off unless a key is configured (--api-key, --api-key-file).  A
 * connection reaches it in one of two ways: handshake.c finds a request
 * for /api/ on the public port and hands the connection over with
 * api_start() (the bytes from the start of that request's head on), or the
 * connection was accepted on the --api-listen listener and starts here.
 * From then on the connection is in CONN_API and every byte read goes to
 * api_input(); it never becomes a WebSocket.
 *
 * HTTP/1.1 with keep-alive and pipelining: requests are parsed and sent to
 * the bus as they arrive, while the answers go out in request order (a
 * publish waiting for Redis holds back the answers behind it, not the
 * publishes behind it).  At most API_PIPELINE_MAX requests wait for their
 * answer per connection; reading stops while that many do.  A request
 * (head and body) must arrive whole within --handshake-timeout of its
 * first byte, and an idle keep-alive connection is closed after as long.
 * Bodies: Content-Length or chunked, at most --max-message-size (413).
 *
 * Everything runs on the worker's loop.  A request waiting for the bus
 * holds a reference on its connection (conn_ref), so a client that goes
 * away first is freed after the answer, which is then dropped.
 */
#ifndef TIDINGS_API_H
#define TIDINGS_API_H

#include <stddef.h>

struct conn;
struct worker;

#define API_PIPELINE_MAX 64    /* requests waiting for their answer, per connection */
#define API_BROADCAST_MAX 1000 /* topics of one broadcast */
#define API_SUB_MAX 256        /* bytes of a "sub" to disconnect */

/* 1 when the path is /api or below /api/. */
int api_is_path(const char *path, size_t len);

/* 1 when the public port serves the API: a key is set and there is no
 * --api-listen. */
int api_on_public_port(const struct worker *w);

/* Takes the connection over: it enters CONN_API, and data[0..len) (may be
 * empty) are its first bytes.  data is borrowed for the call. */
void api_start(struct conn *c, const char *data, size_t len);

/* Bytes read from a connection in CONN_API; borrowed for the call. */
void api_input(struct conn *c, const char *data, size_t len);

/* The worker shuts down: an idle connection closes now, a busy one after
 * the answers it owes (the last says "Connection: close"). */
void api_shutdown(struct conn *c);

/* The connection's deadline passed (worker tick): closes it. */
void api_timeout(struct conn *c);

/* Frees what the connection's API state holds (conn_free; no request is
 * waiting for the bus then: each holds a reference). */
void api_conn_free(struct conn *c);

#endif
