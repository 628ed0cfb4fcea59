/* handshake.h - a connection's HTTP phase (see handshake.c).
 *
 * handshake_input() takes the bytes read while the connection is in
 * CONN_HTTP.  It keeps an incomplete head in c->hbuf (at most
 * HTTP_MAX_HEADER_BYTES), and once the head is whole either upgrades the
 * connection to a WebSocket session (CONN_WS; bytes that followed the head
 * go to ws_feed) or answers and drains it.  data is borrowed for the call.
 */
#ifndef TIDINGS_HANDSHAKE_H
#define TIDINGS_HANDSHAKE_H

#include <stddef.h>

struct conn;

void handshake_input(struct conn *c, const char *data, size_t len);

#endif
