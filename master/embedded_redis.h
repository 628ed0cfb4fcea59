/* embedded_redis.h - the redis-server the master runs when --redis is not
 * given.
 *
 * It listens only on a unix socket in a private temporary directory
 * (mode 700) and persists nothing.  It is started through this executable's
 * exec shim (main.c) so that it dies with the master even when the master
 * is killed outright.  When it dies while not being stopped it is restarted
 * after a growing delay (common/backoff.h).
 *
 * Runs on the master's loop.  The master owns the struct (it embeds it) and
 * must keep it until on_stopped has fired or, when it was never started,
 * embedded_redis_discard() has run.  Paths and strings passed in are not
 * copied: they must outlive the struct.  The callbacks fire on the loop,
 * never from inside the call that caused them:
 *   on_ready    once, when the socket first accepts a connection (or, with
 *               a warning, after REDIS_READY_TIMEOUT_MS): start the workers;
 *               never after embedded_redis_no_restart() or _stop();
 *   on_stopped  once, after embedded_redis_stop(), when the server has
 *               exited, its socket and directory are removed and every
 *               handle of the struct is closed.
 */
#ifndef TIDINGS_EMBEDDED_REDIS_H
#define TIDINGS_EMBEDDED_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct embedded_redis {
  /* the caller's: set after embedded_redis_init(), before _start() */
  void (*on_ready)(struct embedded_redis *r);
  void (*on_stopped)(struct embedded_redis *r);
  void *data;
  char sock[100]; /* the socket's path, for TIDINGS_REDIS=unix:... */
  /* private */
  uv_loop_t *loop;
  const char *server; /* redis-server's path */
  const char *pidvar; /* "TIDINGS_MASTER_PID=...", for the exec shim */
  int quiet;          /* its own output is dropped (a JSON log stream) */
  char dir[64];
  uv_process_t proc;
  uv_timer_t timer; /* readiness polls and restart delays */
  int handles;      /* open: the timer, and proc while not closed */
  int proc_open;
  int running, ready;
  int no_restart; /* shutting down: a death is final */
  int stopping;   /* embedded_redis_stop() was called */
  unsigned polls, failures;
  uint64_t started;
};

/* Creates the private directory and fills in r; opens no handle.  Returns
 * 0, or a negative errno-style code with one line in err. */
int embedded_redis_init(struct embedded_redis *r, uv_loop_t *loop, const char *server,
                        const char *pidvar, int quiet, char *err, size_t errlen);

/* Starts the server.  Returns 0, or a negative libuv code when the timer
 * could not be opened (then undo with embedded_redis_discard()).  A spawn
 * that fails is not an error here: it is logged and retried. */
int embedded_redis_start(struct embedded_redis *r);

/* The master begins to shut down: the server keeps running for the
 * workers still draining, but if it dies now it stays down.  Again, or
 * after embedded_redis_stop(), does nothing. */
void embedded_redis_no_restart(struct embedded_redis *r);

/* Sends SIGTERM to a running server; once it has exited (at once when none
 * runs) removes the socket and the directory, closes the handles and fires
 * on_stopped.  Implies embedded_redis_no_restart().  Calling it again does
 * nothing. */
void embedded_redis_stop(struct embedded_redis *r);

/* Removes the directory of an r that was initialised but never started. */
void embedded_redis_discard(struct embedded_redis *r);

/* redis-server's path: $TIDINGS_REDIS_SERVER if set (NULL if it is not
 * executable), else the first on $PATH, else /usr/bin/redis-server.
 * Returns a static string or NULL. */
const char *embedded_redis_find(void);

#endif
