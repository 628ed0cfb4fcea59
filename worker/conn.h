/* conn.h - one client connection, from accept to close.
 *
 * A connection starts in CONN_HTTP, where handshake.c reads its request
 * head into a bounded buffer and answers it or upgrades it to CONN_WS,
 * where wslay (ws.c) parses frames, or hands it to the HTTP API (api.c):
 * CONN_API, keep-alive HTTP requests until either side closes.  A
 * connection of the --api-listen listener starts in CONN_API.  Every byte to send goes through the
 * connection's outq and is flushed at the end of the loop turn (uv_try_write first, then one
 * uv_write for what is left).  CONN_DRAINING: the last bytes (an HTTP error or a close frame) are
 * queued; once they are out, the write side is shut down and reads are discarded until the peer
 * closes or the deadline passes.
 *
 * Lifetime: the worker owns connections.  conn_close() starts uv_close();
 * the memory is freed in the close callback once no asynchronous operation
 * (a publish waiting for Redis) holds a reference: see conn_ref/conn_unref.
 */
#ifndef TIDINGS_CONN_H
#define TIDINGS_CONN_H

#include <stdint.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "../common/frame.h"

#include "outq.h"
#include "topics.h"

struct worker;

enum conn_state { CONN_HTTP, CONN_WS, CONN_API, CONN_DRAINING, CONN_CLOSED };
enum conn_kind { CONN_PUBSUB, CONN_ECHO };

/* The longest "ip:port" and its NUL: 39 characters of IPv6 (eight groups
 * of four hex digits, the longest form libuv's uv_ip6_name() writes), then
 * ":65535". */
#define CONN_PEER_MAX 46

/* An idle WebSocket connection holds this struct and one struct sub per
 * topic, nothing else: no read buffer (reads land in the worker's), no
 * handshake buffer, no wslay context, no output ring (see ws.c and
 * outq.h).  So its fields are ordered to leave no holes between them
 * (536 bytes, a 544-byte malloc chunk), and tests/unit/test_connsize.c
 * holds the struct to that size class. */
struct conn {
  struct worker *w;
  uv_tcp_t tcp;
  uint64_t id;
  struct conn *prev, *next; /* on w->handshaking or w->open */
  struct conn_list *list;
  struct conn *dirty_next;
  uint64_t deadline; /* loop ms; 0 = none */
  struct outq q;
  uv_write_t *wreq; /* only while a write is in flight */
  size_t inflight_bytes;
  uint32_t inflight;     /* outq entries owned by the in-flight uv_write */
  uint32_t missed;       /* notifications dropped since the last one delivered */
  uint64_t over_since;   /* loop ms when the queue went over the cap; 0 = under */
  double rate_tokens;    /* token bucket of --rate-limit */
  uint64_t rate_last;    /* loop ms of the last refill */
  uint32_t rate_strikes; /* messages refused in a row by the rate limit */
  uint32_t ip_bucket;    /* the client address' row of per-address counts (conn_set_peer) */
  int refs;              /* async operations still pointing here */
  /* HTTP phase */
  uint32_t hlen;
  char *hbuf;
  struct api_conn *api; /* CONN_API: api.c's state */
  /* WebSocket phase */
  wslay_event_context_ptr ws;
  struct frame_input *in;      /* during ws_feed(): what wslay still has to read */
  struct frame_tracker frames; /* where the client's byte stream is */
  struct auth_grant *grant;    /* what the client's token allows, or NULL */
  struct sub *subs;
  int nsubs;
  enum conn_state state : 8; /* enum bit-fields: GCC and clang take them */
  enum conn_kind kind : 8;
  unsigned dirty : 1;
  unsigned writing : 1; /* a uv_write is in flight */
  unsigned shut_wr : 1; /* uv_shutdown issued */
  unsigned awaiting_pong : 1;
  unsigned read_paused : 1;
  unsigned close_queued : 1; /* we queued a close frame */
  unsigned need_proxy : 1;   /* --proxy-protocol: header not yet seen */
  unsigned pmd : 1;          /* permessage-deflate negotiated */
  unsigned upgraded : 1;     /* the 101 was sent: a WebSocket session */
  unsigned ip_counted : 1;   /* counted in shared memory under ip_bucket */
  unsigned rate_started : 1; /* the token bucket has been filled */
  unsigned read_held : 1;    /* the API's pipeline is full: reading stays paused */
  unsigned pmd_bits : 4;     /* the window we may compress with */
  char peer[CONN_PEER_MAX];  /* "ip:port" for logs (the PROXY header's behind HAProxy) */
};

/* Accepts a pending connection from the worker's listener (api: from its
 * --api-listen listener, for the HTTP API alone). */
void conn_accept(struct worker *w, int api);
/* The client's address, at accept and again from a PROXY header: writes
 * it as "ip:port" into c->peer (for logs) and sets c->ip_bucket.  addr
 * NULL or of another family than AF_INET/AF_INET6: "?:0", bucket 0. */
void conn_set_peer(struct conn *c, const struct sockaddr_storage *addr);

/* Queues bytes (copied).  Returns 0 or -1. */
int conn_send_copy(struct conn *c, const void *data, size_t len);
/* Queues a reference to a shared buffer.  Returns 0 or -1. */
int conn_send_ref(struct conn *c, struct sbuf *b);
/* Stops (pause = 1) or resumes reading from the client; a connection that
 * cannot is closed. */
void conn_read_pause(struct conn *c, int pause);
/* Marks the connection for a flush at the end of this loop turn. */
void conn_mark_dirty(struct conn *c);
/* Flushes every dirty connection (the worker's uv_check callback). */
void conn_flush_dirty(struct worker *w);

/* Queues the last bytes then drains and closes (see CONN_DRAINING). */
void conn_drain(struct conn *c, int linger_ms);
/* Closes at once; safe to call more than once. */
void conn_close(struct conn *c);

void conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/* Moves c onto list (NULL: off every list). */
void conn_list_move(struct conn *c, struct conn_list *list);

#endif
