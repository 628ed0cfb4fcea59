/* admin_status.h - the status page: its HTML (status_page.c) and its
 * WebSocket, /status/ws.  Internal to the admin listener.
 *
 * Runs on the master's loop, on connections that stay admin.c's
 * (admin_conn.h); nothing here allocates beyond the writes it queues.  The
 * socket only speaks: a JSON snapshot (admin_metrics_snapshot()) when it
 * opens, then every second from then on, each page on its own schedule (to
 * within the admin's tick).  Of what the page sends it reads
 * control frames: pings are answered, a Close is echoed and then TCP
 * closed; an unmasked frame or one with reserved bits fails the socket with
 * 1002, one over STATUS_FRAME_MAX bytes with 1009.  Data frames are read
 * and ignored.
 */
#ifndef TIDINGS_ADMIN_STATUS_H
#define TIDINGS_ADMIN_STATUS_H

#include <stdint.h>

#include "../common/http.h"
#include "admin_conn.h"

/* The page served at /status and /: one self-contained HTML document. */
extern const char admin_status_html[];

/* c (ACONN_HTTP) sent a valid WebSocket upgrade with Sec-WebSocket-Key
 * `key`: answers 101, moves c to ACONN_WS and sends the first snapshot.
 * Returns 0, or a negative libuv code when a write failed (c is closing). */
int admin_status_open(struct aconn *c, struct http_str key);

/* c (ACONN_WS) has new bytes in c->buf: consumes every complete frame and
 * keeps the rest for the next read. */
void admin_status_input(struct aconn *c);

/* The admin's periodic tick, for c in ACONN_WS or ACONN_WS_CLOSING: a page
 * that stopped reading is dropped rather than queued for, the others get a
 * snapshot when their second is up; a Close never taken is given up on. */
void admin_status_tick(struct aconn *c, uint64_t now);

#endif
