#include "master.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "../common/backoff.h"
#include "../common/log.h"
#include "../common/shm.h"
#include "admin.h"
#include "admin_metrics.h"
#include "embedded_redis.h"

#define MAX_WORKERS MASTER_MAX_WORKERS
_Static_assert(MAX_WORKERS <= ADMIN_MAX_SLOTS, "the admin view has a place for every worker");
/* Restarting a worker that died: the first restart at once (one crash is
 * not a crash loop), then after 100 ms doubling up to 30 s; a worker that
 * lived WORKER_STABLE_MS starts the count again. */
static const struct backoff worker_backoff = {.min_ms = 100, .max_ms = 30000, .jitter = 0};
#define WORKER_STABLE_MS 10000
#define WORKER_SPAWN_RETRY_MS 30000 /* after uv_spawn() itself failed */
#define RELOAD_DRAIN_AFTER_MS \
  500                            /* SIGHUP: old workers get SIGTERM this long after the new start */
#define SHUTDOWN_KILL_MARGIN_S 5 /* SIGKILL what still runs this long after --shutdown-grace */
#define ENV_PER_SPAWN 2          /* m->env[0], [1]: the worker's id and row, set per spawn */
#define ENV_OURS 2               /* TIDINGS_MASTER_PID, TIDINGS_REDIS */
#define VAR_MAX 48

struct master;

struct child {
  struct master *m;
  uv_process_t proc;
  int slot;
  int row;      /* its row in shared memory */
  int retiring; /* replaced by a reload: not restarted */
  int exited;   /* its pid may belong to someone else now: never signalled */
  uint64_t started;
  struct child *next; /* in m->children */
};

struct slot {
  struct master *m;
  int index;
  struct child *current; /* the slot's newest worker, NULL while none runs */
  int row;               /* the row its next worker takes; a reload moves to another */
  uv_timer_t restart;
  unsigned failures; /* deaths in a row, for the backoff */
};

struct master {
  uv_loop_t *loop;
  struct config *cfg;
  char **argv;
  char **env; /* the workers': see build_env() */
  int nslots;
  struct slot slots[MAX_WORKERS];
  struct child *children; /* every worker process until its handle is closed */
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t kill_timer;
  int stopping;
  int finished; /* our handles are closing: uv_run() returns once they are */
  struct shm *shm;
  int shm_fd;
  struct admin_view view; /* what the admin listener reads */
  struct admin *admin;
  char pidvar[VAR_MAX];
  int workers_started;
  /* the embedded redis-server (when --redis is not given) */
  int embedded;
  int redis_stopped;
  struct embedded_redis redis;
  char redis_env[sizeof("TIDINGS_REDIS=unix:") + sizeof(((struct embedded_redis *)0)->sock)];
};

static int probe(const char *host, int portnum, char *err, size_t errlen) {
  struct addrinfo hints = {0}, *ai = NULL;
  char port[16];
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", portnum);
  int rc = getaddrinfo(host, port, &hints, &ai);
  if (rc != 0) {
    snprintf(err, errlen, "cannot use %s: %s", host, gai_strerror(rc));
    return UV_EINVAL;
  }
  /* Without SO_REUSEPORT, so that a listener of any other process
   * (another tidings included) makes this bind fail. */
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  int ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
           bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
  int e = errno;
  if (!ok) snprintf(err, errlen, "cannot listen on %s:%d: %s", host, portnum, strerror(e));
  if (fd >= 0) close(fd);
  freeaddrinfo(ai);
  return ok ? 0 : -e;
}

int master_probe_listen(const struct config *cfg, char *err, size_t errlen) {
  int rc = probe(cfg->bind, cfg->port, err, errlen);
  if (rc < 0 || !cfg->api_listen[0]) return rc;
  char host[256];
  int port;
  if (config_split_hostport(cfg->api_listen, host, sizeof(host), &port) < 0) {
    snprintf(err, errlen, "--api-listen expects host:port");
    return UV_EINVAL;
  }
  if (strcmp(host, cfg->bind) == 0 && port == cfg->port) {
    snprintf(err, errlen, "--api-listen must differ from --bind/--port");
    return UV_EINVAL;
  }
  rc = probe(host, port, err, errlen);
  if (rc < 0) {
    size_t n = strlen(err);
    snprintf(err + n, errlen - n, " (--api-listen)");
  }
  return rc;
}

static int spawn(struct master *m, int slot);

static void start_timer(uv_timer_t *t, uv_timer_cb cb, uint64_t ms, const char *what) {
  int rc = uv_timer_start(t, cb, ms, 0);
  if (rc < 0) log_error("timer_failed", "%s: %s", what, uv_strerror(rc));
}

static void kill_child(struct child *ch, int sig) {
  if (ch->exited) return;
  int rc = uv_process_kill(&ch->proc, sig);
  if (rc < 0 && rc != UV_ESRCH) /* ESRCH: exiting; on_exit_cb follows */
    log_warn("worker_kill_failed", "worker %d (pid %d): %s", ch->slot + 1, ch->proc.pid,
             uv_strerror(rc));
}

static void signal_children(struct master *m, int sig, int only_retiring) {
  for (struct child *ch = m->children; ch; ch = ch->next)
    if (!only_retiring || ch->retiring) kill_child(ch, sig);
}

/* Once stopping and childless, closing our handles lets uv_run return.
 * The embedded Redis goes last, after every worker has left. */
static void maybe_finish(struct master *m) {
  if (!m->stopping || m->children || m->finished) return;
  if (m->embedded && !m->redis_stopped) {
    embedded_redis_stop(&m->redis); /* on_redis_stopped() comes back here */
    return;
  }
  m->finished = 1;
  admin_stop(m->admin);
  m->admin = NULL;
  uv_close((uv_handle_t *)&m->sig_term, NULL);
  uv_close((uv_handle_t *)&m->sig_int, NULL);
  uv_close((uv_handle_t *)&m->sig_hup, NULL);
  uv_close((uv_handle_t *)&m->kill_timer, NULL);
  for (int i = 0; i < m->nslots; i++) uv_close((uv_handle_t *)&m->slots[i].restart, NULL);
}

/* ---- workers ---- */

static void on_child_closed(uv_handle_t *h) {
  struct child *ch = h->data;
  struct master *m = ch->m;
  struct child **pp = &m->children;
  while (*pp && *pp != ch) pp = &(*pp)->next;
  assert(*pp == ch);
  *pp = ch->next;
  free(ch);
  maybe_finish(m);
}

static void on_unspawned_closed(uv_handle_t *h) { free(h->data); }

static void on_restart(uv_timer_t *t) {
  struct slot *s = t->data;
  assert(!s->m->stopping); /* stopping stops every restart timer */
  spawn(s->m, s->index);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  struct child *ch = p->data;
  struct master *m = ch->m;
  assert(ch->slot >= 0 && ch->slot < m->nslots && !ch->exited);
  struct slot *s = &m->slots[ch->slot];
  /* a slot's current worker is only ever replaced by a reload */
  assert(s->current == ch || ch->retiring);
  ch->exited = 1;
  uint64_t lived = uv_now(m->loop) - ch->started;
  int pid = p->pid;
  if (m->stopping || ch->retiring) {
    log_info("worker_exit", "worker %d (pid %d) exited with status %lld%s", ch->slot + 1, pid,
             (long long)status, sig ? " after a signal" : "");
  } else if (sig) {
    log_error("worker_crash", "worker %d (pid %d) was killed by signal %d (%s)", ch->slot + 1, pid,
              sig, strsignal(sig));
  } else {
    log_error("worker_crash", "worker %d (pid %d) exited with status %lld", ch->slot + 1, pid,
              (long long)status);
  }
  if (s->current == ch) {
    s->current = NULL;
    m->view.pid[ch->slot] = 0;
  }
  /* its live state is gone with it; its totals stay in the row */
  struct shm_row *row = &m->shm->rows[ch->row];
  memset(row->m.g, 0, sizeof(row->m.g));
  memset(row->ipcount, 0, sizeof(row->ipcount));
  if (!m->stopping && !ch->retiring) {
    __atomic_store_n(&m->shm->worker_restarts, m->shm->worker_restarts + 1, __ATOMIC_RELAXED);
    if (lived >= WORKER_STABLE_MS) s->failures = 0;
    uint64_t delay = s->failures ? backoff_delay(&worker_backoff, s->failures - 1, 0) : 0;
    s->failures++;
    log_info("worker_restart", "restarting worker %d in %llu ms", ch->slot + 1,
             (unsigned long long)delay);
    start_timer(&s->restart, on_restart, delay, "worker restart");
  }
  uv_close((uv_handle_t *)p, on_child_closed);
}

/* Starts a worker in the slot.  When it cannot, the slot tries again after
 * WORKER_SPAWN_RETRY_MS.  Returns 0 or a negative libuv code. */
static int spawn(struct master *m, int slot) {
  assert(slot >= 0 && slot < m->nslots && !m->stopping);
  struct slot *s = &m->slots[slot];
  assert(!s->current || s->current->retiring);
  assert(!m->env[0] && !m->env[1]);
  struct child *ch = calloc(1, sizeof(*ch));
  if (!ch) {
    log_error("worker_spawn_failed", "cannot start worker %d: out of memory", slot + 1);
    s->failures++;
    start_timer(&s->restart, on_restart, WORKER_SPAWN_RETRY_MS, "worker restart");
    return UV_ENOMEM;
  }
  ch->m = m;
  ch->slot = slot;
  ch->row = s->row;
  ch->proc.data = ch;
  char idvar[VAR_MAX], rowvar[VAR_MAX];
  snprintf(idvar, sizeof(idvar), "TIDINGS_WORKER_ID=%d", slot + 1);
  snprintf(rowvar, sizeof(rowvar), "TIDINGS_SHM_ROW=%d", ch->row);
  /* uv_spawn reads the environment up to its first NULL: these two fill
   * the gap at its start only while spawning */
  m->env[0] = idvar;
  m->env[1] = rowvar;
  uv_stdio_container_t stdio[4] = {{UV_INHERIT_FD, {.fd = 0}},
                                   {UV_INHERIT_FD, {.fd = 1}},
                                   {UV_INHERIT_FD, {.fd = 2}},
                                   {UV_INHERIT_FD, {.fd = m->shm_fd}}}; /* becomes SHM_FD */
  uv_process_options_t o = {0};
  o.exit_cb = on_exit_cb;
  o.file = "/proc/self/exe";
  o.args = m->argv;
  o.env = m->env;
  o.stdio = stdio;
  o.stdio_count = 4;
  int rc = uv_spawn(m->loop, &ch->proc, &o);
  m->env[0] = NULL;
  m->env[1] = NULL;
  if (rc < 0) {
    log_error("worker_spawn_failed", "cannot start worker %d: %s", slot + 1, uv_strerror(rc));
    /* the handle is the loop's even when the spawn failed */
    uv_close((uv_handle_t *)&ch->proc, on_unspawned_closed);
    s->failures++;
    start_timer(&s->restart, on_restart, WORKER_SPAWN_RETRY_MS, "worker restart");
    return rc;
  }
  ch->started = uv_now(m->loop);
  ch->next = m->children;
  m->children = ch;
  s->current = ch;
  m->view.row[slot] = ch->row;
  m->view.pid[slot] = ch->proc.pid;
  log_info("worker_start", "worker %d started (pid %d)", slot + 1, ch->proc.pid);
  return 0;
}

static void start_workers(struct master *m) {
  assert(!m->workers_started && !m->stopping);
  m->workers_started = 1;
  for (int i = 0; i < m->nslots; i++) spawn(m, i);
}

/* ---- the embedded redis-server ---- */

static void on_redis_ready(struct embedded_redis *r) { start_workers(r->data); }

static void on_redis_stopped(struct embedded_redis *r) {
  struct master *m = r->data;
  m->redis_stopped = 1;
  maybe_finish(m);
}

/* ---- signals ---- */

static void on_kill_timer(uv_timer_t *t) {
  struct master *m = t->data;
  if (m->stopping) {
    log_warn("shutdown_kill", "workers still running after the grace period: killing them");
    signal_children(m, SIGKILL, 0);
  } else {
    signal_children(m, SIGUSR1, 1); /* reload: the new workers are up; old ones drain with 1012 */
  }
}

/* A row of the slot that no worker (current or draining) holds. */
static int free_row(struct master *m, int slot) {
  for (int k = 0; k < SHM_ROWS_PER_SLOT; k++) {
    int row = slot + k * m->nslots, busy = 0;
    for (struct child *ch = m->children; ch; ch = ch->next) busy |= ch->row == row;
    if (!busy) return row;
  }
  return -1;
}

static void reload(struct master *m) {
  if (!m->workers_started) {
    log_info("reload", "SIGHUP before the workers started: nothing to reload");
    return;
  }
  log_info("reload", "SIGHUP: starting new workers, then draining the old ones");
  for (int i = 0; i < m->nslots; i++) {
    struct slot *s = &m->slots[i];
    /* the old worker keeps its row until it has drained: the new one
     * takes another row of the slot that no worker holds */
    int row = free_row(m, i);
    if (row < 0) {
      log_warn("reload", "worker %d: %d reloads still draining, not reloading it", i + 1,
               SHM_ROWS_PER_SLOT - 1);
      continue; /* a pending restart of the slot stays pending */
    }
    uv_timer_stop(&s->restart);
    if (s->current) s->current->retiring = 1;
    s->row = row;
    spawn(m, i);
  }
  start_timer(&m->kill_timer, on_kill_timer, RELOAD_DRAIN_AFTER_MS, "reload");
}

static void on_signal(uv_signal_t *h, int signum) {
  struct master *m = h->data;
  if (signum == SIGHUP) {
    if (!m->stopping) reload(m);
    return;
  }
  if (m->stopping) {
    log_warn("shutdown_kill", "second %s: killing workers", strsignal(signum));
    signal_children(m, SIGKILL, 0);
    return;
  }
  m->stopping = 1;
  log_info("shutdown", "%s: stopping %d worker(s)", strsignal(signum), m->nslots);
  if (m->embedded) embedded_redis_no_restart(&m->redis); /* it goes last: see maybe_finish() */
  for (int i = 0; i < m->nslots; i++) uv_timer_stop(&m->slots[i].restart);
  signal_children(m, SIGTERM, 0);
  start_timer(&m->kill_timer, on_kill_timer,
              (uint64_t)(m->cfg->shutdown_grace + SHUTDOWN_KILL_MARGIN_S) * 1000, "shutdown");
  maybe_finish(m);
}

/* ---- starting and ending ---- */

extern char **environ;

static int has_prefix(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The workers' environment: ENV_PER_SPAWN empty places (spawn() fills
 * them), then ours, then environ without the variables we set. */
static int build_env(struct master *m) {
  static const char *const ours[] = {
      "TIDINGS_WORKER_ID=", "TIDINGS_MASTER_PID=", "TIDINGS_SHM_ROW="};
  size_t n = 0;
  while (environ[n]) n++;
  m->env = calloc(ENV_PER_SPAWN + ENV_OURS + n + 1, sizeof(char *));
  if (!m->env) return UV_ENOMEM;
  size_t k = ENV_PER_SPAWN;
  m->env[k++] = m->pidvar;
  if (m->embedded) m->env[k++] = m->redis_env;
  for (size_t i = 0; i < n; i++) {
    int skip = 0;
    for (size_t j = 0; j < sizeof(ours) / sizeof(ours[0]); j++)
      skip |= has_prefix(environ[i], ours[j]);
    if (!skip) m->env[k++] = environ[i];
  }
  m->env[k] = NULL;
  return 0;
}

/* Everything before uv_run().  Returns 0, or a negative code after logging
 * why (*status: the exit status to give); no child runs then. */
static int setup(struct master *m, const char *redis_server, int *status) {
  assert(m->nslots >= 1 && m->nslots <= MAX_WORKERS);
  snprintf(m->pidvar, sizeof(m->pidvar), "TIDINGS_MASTER_PID=%d", (int)getpid());
  if (shm_create((unsigned)(SHM_ROWS_PER_SLOT * m->nslots), &m->shm_fd, &m->shm) < 0) {
    int e = errno;
    log_error("shm_failed", "cannot create the shared memory segment: %s", strerror(e));
    return -e;
  }
  m->view.shm = m->shm;
  m->view.nslots = m->nslots;
  admin_view_shards(&m->view, m->cfg->redis, m->cfg->redis_cluster[0] != 0);
  m->loop = uv_default_loop();
  if (!m->loop) {
    log_error("loop_failed", "cannot create the event loop");
    return UV_ENOMEM;
  }
  uv_signal_t *sigs[] = {&m->sig_term, &m->sig_int, &m->sig_hup};
  int nums[] = {SIGTERM, SIGINT, SIGHUP};
  for (int i = 0; i < 3; i++) {
    int rc = uv_signal_init(m->loop, sigs[i]);
    sigs[i]->data = m;
    if (rc == 0) rc = uv_signal_start(sigs[i], on_signal, nums[i]);
    if (rc < 0) {
      log_error("signal_failed", "cannot handle %s: %s", strsignal(nums[i]), uv_strerror(rc));
      return rc;
    }
  }
  int rc = uv_timer_init(m->loop, &m->kill_timer);
  m->kill_timer.data = m;
  for (int i = 0; i < m->nslots && rc == 0; i++) {
    struct slot *s = &m->slots[i];
    s->m = m;
    s->index = i;
    s->row = i;
    rc = uv_timer_init(m->loop, &s->restart);
    s->restart.data = s;
  }
  if (rc < 0) {
    log_error("timer_failed", "cannot create a timer: %s", uv_strerror(rc));
    return rc;
  }
  if (strcmp(m->cfg->admin_listen, "off") != 0 && m->cfg->admin_listen[0]) {
    char err[256];
    rc = admin_start(m->loop, m->cfg->admin_listen, &m->view, &m->admin, err, sizeof(err));
    if (rc < 0) {
      fprintf(stderr, "tidings: %s\n", err);
      *status = EXIT_CONFIG; /* before any child exists */
      return rc;
    }
    log_info("admin_listen", "admin listener on %s: /metrics /healthz /readyz /status",
             m->cfg->admin_listen);
  }
  if (redis_server) {
    char err[256];
    int quiet = strcmp(m->cfg->log_format, "json") == 0; /* its lines are not ours */
    rc = embedded_redis_init(&m->redis, m->loop, redis_server, m->pidvar, quiet, err, sizeof(err));
    if (rc < 0) {
      log_error("redis_embedded_spawn_failed", "%s", err);
      return rc;
    }
    m->embedded = 1;
    m->redis.on_ready = on_redis_ready;
    m->redis.on_stopped = on_redis_stopped;
    m->redis.data = m;
    snprintf(m->redis_env, sizeof(m->redis_env), "TIDINGS_REDIS=unix:%s", m->redis.sock);
  }
  rc = build_env(m);
  if (rc == 0 && m->embedded) rc = embedded_redis_start(&m->redis);
  if (rc < 0) {
    log_error("master_failed", "cannot start: %s", uv_strerror(rc));
    if (m->embedded) embedded_redis_discard(&m->redis);
    return rc;
  }
  if (!m->embedded) start_workers(m);
  return 0;
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* After setup() failed: closes what it opened (no child runs yet). */
static void abandon(struct master *m) {
  if (!m->loop) return;
  admin_stop(m->admin);
  m->admin = NULL;
  uv_walk(m->loop, close_any, NULL);
  uv_run(m->loop, UV_RUN_DEFAULT);
}

int master_main(struct config *cfg, int argc, char **argv, const char *redis_server) {
  (void)argc;
  signal(SIGPIPE, SIG_IGN);
  struct master *m = calloc(1, sizeof(*m));
  if (!m) {
    log_error("master_failed", "out of memory");
    return EXIT_FAILURE;
  }
  m->cfg = cfg;
  m->argv = argv;
  m->nslots = cfg->workers;
  m->shm_fd = -1;
  int status = EXIT_FAILURE;
  if (setup(m, redis_server, &status) == 0) {
    uv_run(m->loop, UV_RUN_DEFAULT);
    assert(m->finished && !m->children);
    status = EXIT_SUCCESS;
  } else {
    abandon(m);
  }
  if (m->loop) {
    int rc = uv_loop_close(m->loop);
    if (rc < 0) log_warn("loop_close_failed", "event loop: %s", uv_strerror(rc));
  }
  shm_detach(m->shm);
  if (m->shm_fd >= 0) close(m->shm_fd);
  free(m->env);
  free(m);
  if (status == EXIT_SUCCESS) log_info("exit", "all workers stopped, exiting");
  return status;
}
