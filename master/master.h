/* master.h - the supervising process.
 *
 * The master checks the configuration and the listening address before
 * anything starts, then runs a libuv loop (the default loop, in this
 * process only) that spawns the workers (this same executable, re-executed
 * with TIDINGS_WORKER_ID set, so no loop is ever carried across fork),
 * restarts any that dies with a growing delay (common/backoff.h), forwards
 * SIGTERM/SIGINT (drain, then exit) and SIGHUP (start new workers, then
 * drain the old ones), and exits 0 when every child is gone.  It also runs
 * the admin listener (admin.h) and, without --redis, a redis-server
 * (embedded_redis.h).
 */
#ifndef TIDINGS_MASTER_H
#define TIDINGS_MASTER_H

#include <stddef.h>

#include "../common/config.h"

/* Exit status for bad options or an address that cannot be bound. */
#define EXIT_CONFIG 2

/* The most workers a master runs (--workers accepts up to this many). */
#define MASTER_MAX_WORKERS 256

/* Checks that cfg->bind:cfg->port can be listened on by us and is not held
 * by another server.  Returns 0, or a negative errno-style code with one
 * line in err. */
int master_probe_listen(const struct config *cfg, char *err, size_t errlen);

/* Runs the master until shutdown.  Returns the process's exit status: 0
 * after a clean shutdown, EXIT_CONFIG when the admin address cannot be
 * used, 1 when the master could not start.  redis_server is the path of
 * redis-server to run embedded (embedded_redis_find()), or NULL when
 * --redis names an external Redis; it must outlive the call.  cfg and argv
 * are read, and argv is handed to every worker. */
int master_main(struct config *cfg, int argc, char **argv, const char *redis_server);

#endif
