/* admin_metrics.h - what the admin listener reports, read from the
 * workers' rows of shared memory.
 *
 * Pure functions of an admin_view (admin.h): no loop, no sockets, no state.
 * The view and the memory it points to stay the master's.  Workers write
 * their rows while these functions read them (relaxed atomic loads), so a
 * rendering is a moment's picture, not a consistent cut across rows; every
 * counter still only grows from one rendering to the next.  Strings
 * returned belong to the caller, who frees them.
 */
#ifndef TIDINGS_ADMIN_METRICS_H
#define TIDINGS_ADMIN_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "admin.h"

/* The Prometheus text exposition (format 0.0.4), with a worker label per
 * slot.  Returns 0 with a malloc'ed, NUL-terminated *text of *len bytes,
 * or UV_ENOMEM (nothing to free). */
int admin_metrics_text(const struct admin_view *v, char **text, size_t *len);

/* The JSON snapshot the status page draws: {"time", "restarts", "workers":
 * [one object per slot]}.  Returns 0 with a malloc'ed, NUL-terminated
 * *json of *len bytes, or UV_ENOMEM (nothing to free). */
int admin_metrics_snapshot(const struct admin_view *v, char **json, size_t *len);

/* /healthz: true while at least one worker runs. */
bool admin_metrics_healthy(const struct admin_view *v);

/* /readyz: true when every slot's worker runs, listens and is connected
 * to Redis.  Either way writes one line (the first thing missing, or
 * "ready") into why[0..n). */
/* Names the view's shards from --redis (described without credentials). */
void admin_view_shards(struct admin_view *v, const char *redis);

bool admin_metrics_ready(const struct admin_view *v, char *why, size_t n);

#endif
