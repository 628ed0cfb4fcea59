/* admin.h - the admin listener of the master (--admin-listen).
 *
 * Serves, separately from the public port:
 *   GET /metrics    Prometheus text format, summed over every worker's row
 *                   of shared memory (with a worker label where it helps)
 *   GET /healthz    200 while the master runs and at least one worker is up
 *   GET /readyz     200 when every worker is up and connected to Redis
 *   GET /status     a self-contained HTML page with live charts
 *   /status/ws      WebSocket: a JSON snapshot every second (read-only)
 * Runs on the master's loop; reads shared memory, never writes it.  The
 * view it is given stays owned by the master and is read on each request.
 */
#ifndef TIDINGS_ADMIN_H
#define TIDINGS_ADMIN_H

#include <uv.h>

#include "../common/shm.h"

#define ADMIN_MAX_SLOTS 256

struct admin_view {
  struct shm *shm;
  int nslots;
  int row[ADMIN_MAX_SLOTS]; /* current row of each slot */
  int pid[ADMIN_MAX_SLOTS]; /* 0 when the slot has no running worker */
};

struct admin;

/* Listens on "host:port" (IPv6 as [addr]:port).  Returns NULL with one line
 * in err when the address cannot be used. */
struct admin *admin_start(uv_loop_t *loop, const char *listen, const struct admin_view *view,
                          char *err, size_t errlen);
/* Closes the listener and every connection. */
void admin_stop(struct admin *a);

#endif
