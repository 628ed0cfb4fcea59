/* ws.h - a connection's WebSocket session on top of wslay.
 *
 * wslay's event API parses incoming frames (masking, fragmentation,
 * control frames, the close handshake, the message size limit) and
 * serializes the control frames it answers with itself (pongs, its close
 * answers); its send callback copies those bytes into the connection's
 * outq, and they are moved there before anything is queued for the next
 * message it delivers, so frames leave in the order they were produced.
 * Our own frames (replies, echoes, pings, our closes) are written straight
 * into the same outq, as broadcast frames (built elsewhere, shared) are.
 * Text messages are checked for UTF-8 here and handed to the JSON protocol
 * or echoed (compressed like notifications when permessage-deflate was
 * negotiated).
 */
#ifndef TIDINGS_WS_H
#define TIDINGS_WS_H

#include <stddef.h>
#include <stdint.h>

struct conn;
struct proto_ops;

/* The JSON protocol bound to a connection (ctx is the struct conn *);
 * its send queues a text frame at once, so replies may be sent from any
 * callback, also after the request (publish acknowledgements). */
extern const struct proto_ops ws_proto_ops;

/* Creates the session once the 101 response is queued.  Returns 0 or -1. */
int ws_start(struct conn *c);
/* Feeds received bytes to wslay and acts on complete messages. */
void ws_feed(struct conn *c, const uint8_t *data, size_t len);
/* Queues a close frame with code and reason (once) and starts draining. */
void ws_close(struct conn *c, uint16_t code, const char *reason);
/* Queues a ping and marks the connection as awaiting its pong. */
void ws_ping(struct conn *c);
/* 1 when the peer's close frame has arrived. */
int ws_close_received(const struct conn *c);
/* 1 when broadcast frames may still be queued to this connection. */
int ws_can_send(const struct conn *c);
/* Releases the wslay context. */
void ws_free(struct conn *c);

#endif
