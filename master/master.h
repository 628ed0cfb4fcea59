/* master.h - the supervising process.
 *
 * The master checks the configuration and the listening address before
 * anything starts, then runs a libuv loop that spawns the workers (this
 * same executable, re-executed with TIDINGS_WORKER_ID set, so no loop is
 * ever carried across fork), restarts any that dies with a growing delay,
 * forwards SIGTERM/SIGINT (drain, then exit) and SIGHUP (start new workers,
 * then drain the old ones), and exits 0 when every child is gone.
 */
#ifndef TIDINGS_MASTER_H
#define TIDINGS_MASTER_H

#include "../common/config.h"

/* Exit status for bad options or an address that cannot be bound. */
#define EXIT_CONFIG 2

/* Checks that cfg->bind:cfg->port can be listened on by us and is not held
 * by another server.  Returns 0, or -1 with one line in err. */
int master_probe_listen(const struct config *cfg, char *err, size_t errlen);

/* Runs the master until shutdown; returns the exit status.  redis_server
 * is the path of redis-server to run embedded, or NULL when --redis names
 * an external Redis. */
int master_main(struct config *cfg, int argc, char **argv, const char *redis_server);

/* Finds redis-server on PATH; returns a static path or NULL. */
const char *master_find_redis_server(void);

#endif
