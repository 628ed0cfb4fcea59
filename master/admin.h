/* admin.h - the admin listener of the master (--admin-listen).
 *
 * Serves, separately from the public port:
 *   GET /metrics    Prometheus text format, summed over every worker's row
 *                   of shared memory (with a worker label where it helps)
 *   GET /healthz    200 while the master runs and at least one worker is up
 *   GET /readyz     200 when every worker is up, listening and connected
 *                   to Redis
 *   GET /status     a self-contained HTML page with live charts
 *   /status/ws      WebSocket: a JSON snapshot every second (read-only)
 *
 * Runs on the master's loop: every callback fires there, never
 * re-entrantly from admin_start() or admin_stop().  It reads shared memory
 * and never writes it.  The view stays owned by the master, which keeps it
 * alive and current until admin_stop(); it is read on every request.
 * admin_start() allocates the struct admin; admin_stop() starts closing its
 * handles and it frees itself once the last one is closed, so the master's
 * uv_run() returns only after that.
 *
 * Inside: admin.c (listener, connections, HTTP), admin_metrics.c (what is
 * reported), admin_status.c (the status page's socket), admin_conn.h.
 */
#ifndef TIDINGS_ADMIN_H
#define TIDINGS_ADMIN_H

#include "../common/shard.h"
#include <stddef.h>
#include <uv.h>

#include "../common/shm.h"

#define ADMIN_MAX_SLOTS 256

#define ADMIN_SHARD_NAME 160

struct admin_view {
  struct shm *shm;
  int nslots;
  int row[ADMIN_MAX_SLOTS];                 /* current row of each slot */
  int pid[ADMIN_MAX_SLOTS];                 /* 0 when the slot has no running worker */
  int nshards;                              /* Redis servers of --redis (1: the embedded one) */
  char shard[SHARDS_MAX][ADMIN_SHARD_NAME]; /* each as host:port/db, without credentials */
};

struct admin;

/* Listens on "host:port" with a numeric host (IPv6 as [addr]:port).
 * Returns 0 with *out set, or a negative libuv code with one line in err
 * (UV_EINVAL for an address that cannot be read; else the bind or listen
 * error).  On failure the loop may still hold a closing handle: run it, or
 * exit. */
int admin_start(uv_loop_t *loop, const char *listen, const struct admin_view *view,
                struct admin **out, char *err, size_t errlen);

/* Closes the listener and every connection; a may be NULL. */
void admin_stop(struct admin *a);

#endif
