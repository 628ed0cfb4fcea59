#include "worker.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/shm.h"
#include "api.h"
#include "auth_load.h"
#include "bus.h"
#include "pubsub.h"
#include "recovery.h"
#include "sendbatch.h"
#include "slow.h"
#include "conn.h"
#include "ws.h"

/* Exit status of a worker whose listening socket could not be set up: the
 * master logs it and backs off. */
#define WORKER_EXIT_LISTEN 3
#define TICK_MS 1000     /* deadlines, heartbeat and gauges */
#define DRAIN_STEP_MS 50 /* the drain closes a share of the clients this often */
#define LISTEN_BACKLOG 4096
#define SEND_BATCH 256 /* connections written with one io_uring_enter */

static void on_connection(uv_stream_t *server, int status) {
  struct worker *w = server->data;
  if (status < 0) {
    log_warn("accept_failed", "accept failed: %s", uv_strerror(status));
    return;
  }
  conn_accept(w, server == (uv_stream_t *)&w->api_listener);
}

/* Creates, binds and listens on a socket of our own with SO_REUSEPORT: the
 * kernel spreads new connections over the workers' sockets.  libuv 1.44 has
 * no UV_TCP_REUSEPORT, so the socket is made here and handed to libuv. */
static int listen_on(struct worker *w, uv_tcp_t *listener, const char *host, int portnum) {
  struct addrinfo hints = {0}, *ai = NULL;
  char port[16];
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", portnum);
  int rc = getaddrinfo(host, port, &hints, &ai);
  if (rc != 0) {
    log_error("listen_failed", "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
      bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
    log_error("listen_failed", "cannot listen on %s:%d: %s", host, portnum, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return -1;
  }
  freeaddrinfo(ai);
  if ((rc = uv_tcp_init(w->loop, listener)) != 0) {
    log_error("listen_failed", "cannot listen on %s:%d: %s", host, portnum, uv_strerror(rc));
    close(fd);
    return -1;
  }
  listener->data = w;
  if ((rc = uv_tcp_open(listener, fd)) != 0 ||
      (rc = uv_listen((uv_stream_t *)listener, LISTEN_BACKLOG, on_connection)) != 0) {
    log_error("listen_failed", "cannot listen on %s:%d: %s", host, portnum, uv_strerror(rc));
    uv_close((uv_handle_t *)listener, NULL);
    return -1;
  }
  return 0;
}

static int listen_socket(struct worker *w) {
  if (listen_on(w, &w->listener, w->cfg->bind, w->cfg->port) < 0) return -1;
  w->listening = 1;
  if (w->cfg->api_listen[0] && w->api_key) {
    char host[256];
    int port;
    if (config_split_hostport(w->cfg->api_listen, host, sizeof(host), &port) < 0 ||
        listen_on(w, &w->api_listener, host, port) < 0)
      return -1;
    w->api_listening = 1;
  }
  metric_gauge(w->m, G_LISTENING, 1);
  return 0;
}

static void stop_listening(struct worker *w) {
  if (!w->listening) return;
  w->listening = 0;
  metric_gauge(w->m, G_LISTENING, 0);
  uv_close((uv_handle_t *)&w->listener, NULL);
  if (w->api_listening) {
    w->api_listening = 0;
    uv_close((uv_handle_t *)&w->api_listener, NULL);
  }
}

/* Walks a list where the callback may move or close the current entry. */
#define EACH_CONN(list, c, body)           \
  do {                                     \
    struct conn *c = (list).first, *c##_n; \
    for (; c; c = c##_n) {                 \
      c##_n = c->next;                     \
      body                                 \
    }                                      \
  } while (0)

static void heartbeat(struct worker *w) {
  EACH_CONN(w->open, c, {
    if (c->awaiting_pong) {
      log_info("ping_timeout", "conn %llu %s: no pong within %ds, closing",
               (unsigned long long)c->id, c->peer, w->cfg->ping_interval);
      conn_close(c);
    } else {
      ws_ping(c);
    }
  });
}

static void on_tick(uv_timer_t *t) {
  struct worker *w = t->data;
  uint64_t now = uv_now(w->loop);
  w->ticks++;
  EACH_CONN(w->handshaking, c, {
    if (c->deadline && now >= c->deadline) {
      if (c->state == CONN_API) {
        api_timeout(c);
        continue;
      }
      if (c->state == CONN_HTTP) {
        log_debug("handshake_timeout", "conn %llu %s: handshake timeout", (unsigned long long)c->id,
                  c->peer);
        metric_add(w->m, M_REJECT_FIRST + REJECT_TIMEOUT, 1);
      }
      conn_close(c);
    }
  });
  EACH_CONN(w->open, c, {
    if (c->q.count == 0 && !c->writing) outq_trim(&c->q);
    else slow_tick(c, now);
  });
  if (!w->shutting_down && w->ticks % (uint64_t)w->cfg->ping_interval == 0) heartbeat(w);
  recovery_tick(w);
  metric_gauge(w->m, G_TOPICS, (int64_t)w->topics.ntopics);
  metric_gauge(w->m, G_REDIS_CONNECTED, bus_ready(w->bus));
}

/* Output queued during a loop turn goes out once, at its end: after the
 * I/O callbacks (check) and, for what timers queued, before the loop
 * blocks in poll (prepare). */
static void on_check(uv_check_t *h) { conn_flush_dirty(h->data); }
static void on_prepare(uv_prepare_t *h) { conn_flush_dirty(h->data); }

static void finish(struct worker *w) {
  uv_timer_stop(&w->grace);
  uv_timer_stop(&w->drain);
  uv_stop(w->loop);
}

void worker__conn_gone(struct worker *w) {
  w->nconns--;
  if (w->shutting_down && w->nconns == 0) finish(w);
}

static void on_grace(uv_timer_t *t) {
  struct worker *w = t->data;
  log_warn("shutdown_grace_over", "shutdown grace period over, closing %zu connection(s)",
           w->nconns);
  EACH_CONN(w->open, c, { conn_close(c); });
  EACH_CONN(w->handshaking, c, { conn_close(c); });
}

/* Closes the next share of the open connections, so that the drain ends
 * --drain-window seconds after it began: reconnects arrive spread out, not
 * all in the same moment. */
static void on_drain_step(uv_timer_t *t) {
  struct worker *w = t->data;
  uint64_t elapsed = uv_now(w->loop) - w->drain_started;
  uint64_t window = (uint64_t)w->cfg->drain_window * 1000;
  size_t due = elapsed >= window ? w->drain_total
                                 : (size_t)((w->drain_total * elapsed + window - 1) / window);
  while (w->drain_closed < due && w->open.first) {
    ws_close(w->open.first, w->drain_code,
             w->drain_code == CLOSE_SERVICE_RESTART ? "service restart" : "server shutting down");
    w->drain_closed++;
  }
  if (!w->open.first) uv_timer_stop(&w->drain);
}

void worker_shutdown(struct worker *w, uint16_t code) {
  if (w->shutting_down) return;
  w->shutting_down = 1;
  log_info("shutdown", "%s: %zu connection(s) closed over %ds, grace %ds",
           code == CLOSE_SERVICE_RESTART ? "reload" : "shutting down", w->open.count,
           w->cfg->drain_window, w->cfg->shutdown_grace);
  stop_listening(w);
  EACH_CONN(w->handshaking, c, {
    if (c->state == CONN_HTTP) conn_close(c);
    else if (c->state == CONN_API) api_shutdown(c);
  });
  w->drain_code = code;
  w->drain_total = w->open.count;
  w->drain_closed = 0;
  w->drain_started = uv_now(w->loop);
  if (w->cfg->drain_window > 0 && w->open.count > 1) {
    /* ws_close() moves a connection off w->open: the next is first */
    uv_timer_start(&w->drain, on_drain_step, 0, DRAIN_STEP_MS);
  } else {
    EACH_CONN(w->open, c, {
      ws_close(c, code, code == CLOSE_SERVICE_RESTART ? "service restart" : "server shutting down");
    });
  }
  if (w->nconns == 0) {
    finish(w);
    return;
  }
  uv_timer_start(&w->grace, on_grace, (uint64_t)w->cfg->shutdown_grace * 1000, 0);
}

static void on_signal(uv_signal_t *s, int signum) {
  struct worker *w = s->data;
  if (signum == SIGHUP) return; /* the master handles reloads */
  /* SIGUSR1: the master replaces this worker (a reload) */
  worker_shutdown(w, signum == SIGUSR1 ? CLOSE_SERVICE_RESTART : CLOSE_GOING_AWAY);
}

/* Starts the timers, the flusher and the signal handlers.  Returns 0 or a
 * negative libuv error. */
static int start_handles(struct worker *w) {
  int rc;
  if ((rc = uv_timer_init(w->loop, &w->tick)) != 0 ||
      (rc = uv_timer_init(w->loop, &w->grace)) != 0 ||
      (rc = uv_timer_init(w->loop, &w->drain)) != 0 ||
      (rc = uv_check_init(w->loop, &w->flusher)) != 0 ||
      (rc = uv_prepare_init(w->loop, &w->flusher_pre)) != 0)
    return rc;
  w->tick.data = w->grace.data = w->drain.data = w->flusher.data = w->flusher_pre.data = w;
  if ((rc = uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS)) != 0 ||
      (rc = uv_check_start(&w->flusher, on_check)) != 0 ||
      (rc = uv_prepare_start(&w->flusher_pre, on_prepare)) != 0)
    return rc;
  uv_signal_t *sigs[] = {&w->sig_term, &w->sig_int, &w->sig_hup, &w->sig_usr1};
  int nums[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
  for (int i = 0; i < 4; i++) {
    if ((rc = uv_signal_init(w->loop, sigs[i])) != 0) return rc;
    sigs[i]->data = w;
    if ((rc = uv_signal_start(sigs[i], on_signal, nums[i])) != 0) return rc;
  }
  return 0;
}

/* Maps the shared memory from the master (fd 3), or a private segment when
 * the worker runs alone.  Returns 0 or -1. */
static int attach_shm(struct worker *w) {
  const char *row = getenv("TIDINGS_SHM_ROW");
  int private_fd = -1;
  if (row && (w->shm = shm_attach(SHM_FD))) {
    w->shm_row = (unsigned)atoi(row);
    close(SHM_FD);
  } else if (shm_create(1, &private_fd, &w->shm) == 0) {
    w->shm_row = 0;
    close(private_fd);
  } else {
    return -1;
  }
  if (w->shm_row >= w->shm->nrows) w->shm_row = 0;
  shm_worker_start(w->shm, w->shm_row, (uint32_t)getpid());
  w->m = &w->shm->rows[w->shm_row].m;
  return 0;
}

struct worker *worker_new(const struct config *cfg, int id, int *status) {
  struct worker *w = calloc(1, sizeof(*w));
  *status = 1;
  if (!w) return NULL;
  w->cfg = cfg;
  w->id = id;
  w->loop = malloc(sizeof(uv_loop_t));
  if (!w->loop || uv_loop_init(w->loop) != 0) {
    log_error("init_failed", "cannot initialize the event loop");
    free(w->loop);
    free(w);
    return NULL;
  }
  pmd_init(&w->pmd, cfg->max_message_size); /* streams are made on first use */
  if (!cfg->no_io_uring && !(w->batch = sendbatch_new(SEND_BATCH)))
    log_info("io_uring_unavailable", "io_uring cannot be used: one write per connection");
  if (topics_init(&w->topics) != 0) {
    log_error("init_failed", "out of memory");
    goto fail;
  }
  char aerr[256];
  const char *alg;
  if (auth_load(cfg, &w->auth, &alg, aerr, sizeof(aerr)) < 0) {
    log_error("auth_config_failed", "%s", aerr);
    *status = WORKER_EXIT_LISTEN;
    goto fail;
  }
  if (api_key_load(cfg, &w->api_key, &w->api_key_len, aerr, sizeof(aerr)) < 0) {
    log_error("api_config_failed", "%s", aerr);
    *status = WORKER_EXIT_LISTEN;
    goto fail;
  }
  if (attach_shm(w) < 0) {
    log_error("shm_failed", "cannot map shared memory");
    goto fail;
  }
  int rc = start_handles(w);
  if (rc != 0) {
    log_error("init_failed", "cannot start the worker's handles: %s", uv_strerror(rc));
    goto fail;
  }
  if (pubsub_start(w) < 0 || listen_socket(w) < 0) {
    *status = WORKER_EXIT_LISTEN;
    goto fail;
  }
  *status = 0;
  return w;
fail:
  worker_free(w);
  return NULL;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void worker_free(struct worker *w) {
  if (!w) return;
  /* connections first (a test may stop a worker that still has some):
   * their memory goes in their close callbacks, or when the bus answers
   * the last publish that holds one */
  EACH_CONN(w->open, c, { conn_close(c); });
  EACH_CONN(w->handshaking, c, { conn_close(c); });
  conn_flush_dirty(w); /* drops the flusher's references */
  pubsub_stop(w);
  /* then every other handle; let their callbacks run, free */
  uv_walk(w->loop, close_walk, NULL);
  uv_run(w->loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(w->loop);
  assert(rc == 0); /* every handle closed above */
  (void)rc;
  topics_free(&w->topics);
  sendbatch_free(w->batch);
  pmd_free(&w->pmd);
  auth_free(w->auth);
  if (w->api_key) {
    memset(w->api_key, 0, w->api_key_len);
    free(w->api_key);
  }
  if (w->shm) shm_detach(w->shm);
  free(w->loop);
  free(w);
}

int worker_main(const struct config *cfg, int id) {
  char role[32];
  snprintf(role, sizeof(role), "worker %d", id);
  log_set_role(role);
  log_set_worker(id);
  log_nonblocking();
  char comm[16];
  snprintf(comm, sizeof(comm), "tidings-w%d", id);
  prctl(PR_SET_NAME, comm);
  /* Never outlive the master: it is told to us in TIDINGS_MASTER_PID. */
  const char *mp = getenv("TIDINGS_MASTER_PID");
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (mp && getppid() != (pid_t)atoi(mp)) return 0;
  signal(SIGPIPE, SIG_IGN);

  int status;
  struct worker *w = worker_new(cfg, id, &status);
  if (!w) return status;
  log_info("listen", "listening on %s:%d", cfg->bind, cfg->port);
  uv_run(w->loop, UV_RUN_DEFAULT);
  log_info("stop", "stopped");
  worker_free(w);
  return 0;
}
