/* worker.h - one worker process: a libuv loop, its listening socket, its
 * connections and topics.
 *
 * Everything here runs on the worker's single loop.  The worker owns every
 * connection (freed only from uv_close callbacks) and the topic table.  One
 * 1-second timer drives all deadlines (handshakes, closing handshakes) and
 * the heartbeat; one uv_check handle flushes the connections that queued
 * output during the loop turn.
 */
#ifndef TIDINGS_WORKER_H
#define TIDINGS_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "../common/config.h"
#include "../common/metrics.h"
#include "pmd.h"
#include "topics.h"

struct conn;
struct bus;
struct control;
struct shm;

/* the head of a doubly linked list of connections (not circular: the
 * first's prev and the last's next are NULL); conn_list_move() moves a
 * connection between lists in O(1) and keeps count */
struct conn_list {
  struct conn *first;
  size_t count;
};

struct worker {
  uv_loop_t *loop;
  const struct config *cfg;
  int id;
  uv_tcp_t listener;
  int listening;
  uv_tcp_t api_listener; /* --api-listen */
  int api_listening;
  char *api_key; /* the HTTP API's key (api_key_len bytes), or NULL: the API is off */
  size_t api_key_len;
  uv_timer_t tick;          /* 1 s: deadlines and heartbeat */
  uv_check_t flusher;       /* after I/O callbacks: flush dirty connections */
  uv_prepare_t flusher_pre; /* before polling: flush what timers queued */
  uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
  uv_timer_t grace;
  uv_timer_t drain;       /* closes clients spread over --drain-window */
  uint64_t drain_started; /* loop ms */
  size_t drain_total, drain_closed;
  uint16_t drain_code;
  uint64_t ticks;
  int shutting_down;
  struct conn_list handshaking; /* HTTP phase and lingering closes: have deadlines */
  struct conn_list open;        /* WebSocket sessions */
  struct conn *dirty;           /* singly linked through conn->dirty_next */
  struct sendbatch *batch;      /* io_uring sends of a flush, or NULL (--no-io-uring) */
  struct topics topics;
  struct bus *bus;
  struct control *control; /* control.c's */
  struct pmd pmd;          /* permessage-deflate streams shared by all connections */
  struct auth *auth;       /* JWT verifier, or NULL: anonymous access */
  struct shm *shm;         /* shared with the master and the other workers */
  unsigned shm_row;        /* the row this worker writes */
  struct metrics *m;       /* this worker's counters, in its shared-memory row */
  uint64_t flush_now_us;   /* uv_hrtime()/1000 at the latest write to the kernel (consumed()) */
  uint64_t next_conn_id;
  size_t nconns;           /* accepted and not yet freed from the loop */
  size_t history_stalled;  /* topics whose catch-up waits for the bus (recovery.c) */
  char readbuf[64 * 1024]; /* every read lands here and is consumed at once */
};

/* Runs the worker until it shuts down; returns the process exit status. */
int worker_main(const struct config *cfg, int id);

/* The parts of worker_main, for tests that drive a worker's loop
 * themselves.  worker_new() sets up the loop, shared memory (a private
 * segment outside a master), the bus and the listening socket; on failure
 * it returns NULL with the exit status in *status.  worker_free() closes
 * every handle (connections included), runs the loop until their callbacks
 * are done, and frees the worker.  cfg must outlive the worker. */
struct worker *worker_new(const struct config *cfg, int id, int *status);
void worker_free(struct worker *w);

/* Close codes of a drain: the server goes away (SIGTERM), or restarts and
 * a client should reconnect at once and resume (a reload: SIGUSR1 from the
 * master). */
#define CLOSE_GOING_AWAY 1001
#define CLOSE_SERVICE_RESTART 1012
/* ...and of a connection closed for falling behind: come back later */
#define CLOSE_TRY_AGAIN_LATER 1013

/* Begins the graceful shutdown: no new connections; open ones get a close
 * with code, spread over --drain-window; whatever is left after
 * --shutdown-grace is cut. */
void worker_shutdown(struct worker *w, uint16_t code);

/* Called by conn.c when a connection is gone; ends the shutdown when the
 * last one leaves. */
void worker__conn_gone(struct worker *w);

#endif
