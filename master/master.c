#include "master.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "../common/log.h"
#include "../common/shm.h"
#include "admin.h"

#define MAX_WORKERS 256
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 10000 /* a worker that lived this long resets its backoff */

struct master;

struct child {
  struct master *m;
  uv_process_t proc;
  int slot;
  int retiring; /* replaced by a reload: not restarted */
  int row;      /* its row in shared memory */
  uint64_t started;
  struct child *next;
};

struct slot {
  struct child *current;
  int row; /* its row in shared memory; a reload moves to the other half */
  uv_timer_t restart;
  unsigned failures;
};

struct master {
  uv_loop_t *loop;
  struct config *cfg;
  char **argv;
  char **env; /* environ plus our two variables, per slot rebuilt */
  int nslots;
  struct slot slots[MAX_WORKERS];
  struct child *children;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t kill_timer;
  int stopping;
  struct shm *shm;
  int shm_fd;
  struct admin_view view; /* what the admin listener reads */
  struct admin *admin;
  char pidvar[48];
  int workers_started;
  /* the embedded redis-server (when --redis is not given) */
  int embedded;
  const char *redis_server;
  char redis_dir[64];
  char redis_sock[100];
  char redis_env[128];
  uv_process_t redis_proc;
  int redis_running, redis_signaled;
  unsigned redis_failures;
  uint64_t redis_started;
  uv_timer_t redis_timer; /* readiness polling and restart backoff */
  int redis_polls;
};

int master_probe_listen(const struct config *cfg, char *err, size_t errlen) {
  struct addrinfo hints = {0}, *ai = NULL;
  char port[16];
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(port, sizeof(port), "%d", cfg->port);
  int rc = getaddrinfo(cfg->bind, port, &hints, &ai);
  if (rc != 0) {
    snprintf(err, errlen, "cannot use --bind %s: %s", cfg->bind, gai_strerror(rc));
    return -1;
  }
  /* Without SO_REUSEPORT, so that a listener of any other process
   * (another tidings included) makes this bind fail. */
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  int ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
           bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
  if (!ok)
    snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->bind, cfg->port, strerror(errno));
  if (fd >= 0) close(fd);
  freeaddrinfo(ai);
  return ok ? 0 : -1;
}

static void spawn(struct master *m, int slot);

/* Once stopping and childless, closing our handles lets uv_run return.
 * The embedded Redis goes last, after every worker has left. */
static void maybe_finish(struct master *m) {
  if (!m->stopping || m->children) return;
  if (m->redis_running) {
    if (!m->redis_signaled) {
      m->redis_signaled = 1;
      uv_process_kill(&m->redis_proc, SIGTERM);
    }
    return;
  }
  if (m->embedded) uv_close((uv_handle_t *)&m->redis_timer, NULL);
  admin_stop(m->admin);
  m->admin = NULL;
  uv_close((uv_handle_t *)&m->sig_term, NULL);
  uv_close((uv_handle_t *)&m->sig_int, NULL);
  uv_close((uv_handle_t *)&m->sig_hup, NULL);
  uv_close((uv_handle_t *)&m->kill_timer, NULL);
  for (int i = 0; i < m->nslots; i++) uv_close((uv_handle_t *)&m->slots[i].restart, NULL);
}

static void on_child_closed(uv_handle_t *h) {
  struct child *ch = h->data;
  struct master *m = ch->m;
  for (struct child **pp = &m->children; *pp; pp = &(*pp)->next) {
    if (*pp == ch) {
      *pp = ch->next;
      break;
    }
  }
  free(ch);
  maybe_finish(m);
}

static void on_restart(uv_timer_t *t) {
  struct master *m = t->data;
  for (int i = 0; i < m->nslots; i++)
    if (&m->slots[i].restart == t && !m->stopping) spawn(m, i);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  struct child *ch = p->data;
  struct master *m = ch->m;
  struct slot *s = &m->slots[ch->slot];
  uint64_t lived = uv_now(m->loop) - ch->started;
  int pid = p->pid;
  if (m->stopping || ch->retiring) {
    log_info("worker_exit", "worker %d (pid %d) exited with status %lld%s", ch->slot + 1, pid,
             (long long)status, sig ? " after a signal" : "");
  } else if (sig) {
    log_error("worker_crash", "worker %d (pid %d) was killed by signal %d (%s)", ch->slot + 1, pid, sig,
              strsignal(sig));
  } else {
    log_error("worker_crash", "worker %d (pid %d) exited with status %lld", ch->slot + 1, pid, (long long)status);
  }
  if (s->current == ch) {
    s->current = NULL;
    m->view.pid[ch->slot] = 0;
  }
  /* its live state is gone with it; its totals stay in the row */
  struct shm_row *row = &m->shm->rows[ch->row];
  memset(row->m.g, 0, sizeof(row->m.g));
  memset(row->ipcount, 0, sizeof(row->ipcount));
  if (!m->stopping && !ch->retiring)
    __atomic_store_n(&m->shm->worker_restarts, m->shm->worker_restarts + 1, __ATOMIC_RELAXED);
  if (!m->stopping && !ch->retiring) {
    if (lived >= STABLE_MS) s->failures = 0;
    uint64_t delay = 0;
    if (s->failures > 0) {
      delay = BACKOFF_MIN_MS;
      for (unsigned i = 1; i < s->failures && delay < BACKOFF_MAX_MS; i++) delay *= 2;
      if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
    }
    s->failures++;
    log_info("worker_restart", "restarting worker %d in %llu ms", ch->slot + 1, (unsigned long long)delay);
    uv_timer_start(&s->restart, on_restart, delay, 0);
  }
  uv_close((uv_handle_t *)p, on_child_closed);
}

static void spawn(struct master *m, int slot) {
  struct child *ch = calloc(1, sizeof(*ch));
  if (!ch) return;
  ch->m = m;
  ch->slot = slot;
  ch->proc.data = ch;
  char idvar[48], rowvar[48];
  snprintf(idvar, sizeof(idvar), "TIDINGS_WORKER_ID=%d", slot + 1);
  snprintf(rowvar, sizeof(rowvar), "TIDINGS_SHM_ROW=%d", m->slots[slot].row);
  /* m->env[0] and [1] are reserved for these two */
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
  if (rc != 0) {
    log_error("worker_spawn_failed", "cannot start worker %d: %s", slot + 1, uv_strerror(rc));
    free(ch);
    struct slot *s = &m->slots[slot];
    s->failures++;
    uv_timer_start(&s->restart, on_restart, BACKOFF_MAX_MS, 0);
    return;
  }
  ch->started = uv_now(m->loop);
  ch->next = m->children;
  m->children = ch;
  m->slots[slot].current = ch;
  ch->row = m->slots[slot].row;
  m->view.row[slot] = ch->row;
  m->view.pid[slot] = ch->proc.pid;
  log_info("worker_start", "worker %d started (pid %d)", slot + 1, ch->proc.pid);
}


/* ---- the embedded redis-server ---- */

static void spawn_redis(struct master *m);
static void start_workers(struct master *m);

static void on_redis_timer(uv_timer_t *t) {
  struct master *m = t->data;
  if (!m->redis_running) {
    if (!m->stopping) spawn_redis(m);
    return;
  }
  if (m->workers_started) return;
  /* poll the socket until Redis accepts connections, then start workers */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", m->redis_sock);
  int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  if (fd >= 0) close(fd);
  if (ok || ++m->redis_polls > 250) {
    if (!ok) log_warn("redis_embedded_slow", "embedded redis-server not answering after 5 s; starting workers anyway");
    start_workers(m);
    return;
  }
  uv_timer_start(&m->redis_timer, on_redis_timer, 20, 0);
}

static void on_redis_exit(uv_process_t *p, int64_t status, int sig) {
  struct master *m = p->data;
  m->redis_running = 0;
  if (m->stopping) {
    log_info("redis_embedded_exit", "embedded redis-server exited");
  } else {
    if (sig) log_error("redis_embedded_crash", "embedded redis-server (pid %d) was killed by signal %d", p->pid, sig);
    else log_error("redis_embedded_crash", "embedded redis-server (pid %d) exited with status %lld", p->pid, (long long)status);
    if (uv_now(m->loop) - m->redis_started >= STABLE_MS) m->redis_failures = 0;
    uint64_t delay = BACKOFF_MIN_MS;
    for (unsigned i = 0; i < m->redis_failures && delay < BACKOFF_MAX_MS; i++) delay *= 2;
    if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
    m->redis_failures++;
    log_info("redis_embedded_restart", "restarting embedded redis-server in %llu ms", (unsigned long long)delay);
    uv_timer_start(&m->redis_timer, on_redis_timer, delay, 0);
  }
  uv_close((uv_handle_t *)p, NULL);
  if (m->stopping) {
    unlink(m->redis_sock);
    rmdir(m->redis_dir);
    maybe_finish(m);
  }
}

static void spawn_redis(struct master *m) {
  const char *args[] = {"tidings-redis", m->redis_server, "--port", "0", "--unixsocket",
                  m->redis_sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                  "--dir", m->redis_dir, "--daemonize", "no", "--loglevel", "warning",
                  "--databases", "1",
                  /* a worker busy writing to its clients may fall behind for a
                   * moment: give its subscriber connection room before Redis
                   * cuts it (and messages are lost) */
                  "--client-output-buffer-limit", "pubsub 256mb 64mb 60", NULL};
  const char *env[] = {"TIDINGS_EXEC_SHIM=1", m->pidvar, NULL};
  /* its own log lines are not ours: keep them out of a JSON log stream */
  int quiet = strcmp(m->cfg->log_format, "json") == 0;
  uv_stdio_container_t stdio[3] = {{UV_IGNORE, {0}},
                                   {quiet ? UV_IGNORE : UV_INHERIT_FD, {.fd = 2}},
                                   {quiet ? UV_IGNORE : UV_INHERIT_FD, {.fd = 2}}};
  uv_process_options_t o = {0};
  o.exit_cb = on_redis_exit;
  o.file = "/proc/self/exe";
  o.args = (char **)args; /* libuv does not write to them */
  o.env = (char **)env;
  o.stdio = stdio;
  o.stdio_count = 3;
  m->redis_proc.data = m;
  int rc = uv_spawn(m->loop, &m->redis_proc, &o);
  if (rc != 0) {
    log_error("redis_embedded_spawn_failed", "cannot start %s: %s", m->redis_server, uv_strerror(rc));
    m->redis_failures++;
    uv_timer_start(&m->redis_timer, on_redis_timer, BACKOFF_MAX_MS, 0);
    return;
  }
  m->redis_running = 1;
  m->redis_signaled = 0;
  m->redis_started = uv_now(m->loop);
  m->redis_polls = 0;
  log_info("redis_embedded_start", "embedded redis-server started (pid %d) on unix:%s", m->redis_proc.pid, m->redis_sock);
  if (!m->workers_started) uv_timer_start(&m->redis_timer, on_redis_timer, 10, 0);
}

static void start_workers(struct master *m) {
  m->workers_started = 1;
  for (int i = 0; i < m->nslots; i++) spawn(m, i);
}

static void signal_children(struct master *m, int sig, int only_retiring) {
  for (struct child *ch = m->children; ch; ch = ch->next)
    if (!only_retiring || ch->retiring) uv_process_kill(&ch->proc, sig);
}

static void on_kill_timer(uv_timer_t *t) {
  struct master *m = t->data;
  if (m->stopping) {
    log_warn("shutdown_kill", "workers still running after the grace period: killing them");
    signal_children(m, SIGKILL, 0);
  } else {
    signal_children(m, SIGTERM, 1); /* reload: the new workers are up */
  }
}

/* A row of the slot that no running worker (current or draining) holds. */
static int free_row(struct master *m, int slot) {
  for (int k = 0; k < SHM_ROWS_PER_SLOT; k++) {
    int row = slot + k * m->nslots, busy = 0;
    for (struct child *ch = m->children; ch; ch = ch->next) busy |= ch->row == row;
    if (!busy) return row;
  }
  return -1;
}

static void on_signal(uv_signal_t *h, int signum) {
  struct master *m = h->data;
  if (signum == SIGHUP) {
    if (m->stopping) return;
    log_info("reload", "SIGHUP: starting new workers, then draining the old ones");
    for (int i = 0; i < m->nslots; i++) {
      if (m->slots[i].current) m->slots[i].current->retiring = 1;
      uv_timer_stop(&m->slots[i].restart);
      /* the old worker keeps its row until it has drained: the new one
       * takes another row of the slot that no running worker holds */
      int row = free_row(m, i);
      if (row < 0) {
        log_warn("reload", "worker %d: %d reloads still draining, not reloading it", i + 1,
                 SHM_ROWS_PER_SLOT - 1);
        if (m->slots[i].current) m->slots[i].current->retiring = 0;
        continue;
      }
      m->slots[i].row = row;
      spawn(m, i);
    }
    uv_timer_start(&m->kill_timer, on_kill_timer, 500, 0);
    return;
  }
  if (m->stopping) {
    log_warn("shutdown_kill", "second %s: killing workers", strsignal(signum));
    signal_children(m, SIGKILL, 0);
    return;
  }
  m->stopping = 1;
  log_info("shutdown", "%s: stopping %d worker(s)", strsignal(signum), m->nslots);
  for (int i = 0; i < m->nslots; i++) uv_timer_stop(&m->slots[i].restart);
  signal_children(m, SIGTERM, 0);
  uv_timer_start(&m->kill_timer, on_kill_timer, (uint64_t)(m->cfg->shutdown_grace + 5) * 1000, 0);
  maybe_finish(m);
}

extern char **environ;

int master_main(struct config *cfg, int argc, char **argv, const char *redis_server) {
  (void)argc;
  signal(SIGPIPE, SIG_IGN);
  struct master *m = calloc(1, sizeof(*m));
  if (!m) return 1;
  m->cfg = cfg;
  m->argv = argv;
  m->nslots = cfg->workers;
  size_t n = 0;
  while (environ[n]) n++;
  m->env = calloc(n + 5, sizeof(char *));
  snprintf(m->pidvar, sizeof(m->pidvar), "TIDINGS_MASTER_PID=%d", (int)getpid());
  size_t k = 2; /* 0 and 1: the worker's id and shared-memory row, set per spawn */
  m->env[k++] = m->pidvar;
  if (shm_create((unsigned)(SHM_ROWS_PER_SLOT * m->nslots), &m->shm_fd, &m->shm) < 0) {
    log_error("shm_failed", "cannot create the shared memory segment: %s", strerror(errno));
    return 1;
  }
  for (int i = 0; i < m->nslots; i++) m->slots[i].row = i;
  m->view.shm = m->shm;
  m->view.nslots = m->nslots;
  if (redis_server) {
    m->embedded = 1;
    m->redis_server = redis_server;
    snprintf(m->redis_dir, sizeof(m->redis_dir), "/tmp/tidings-XXXXXX");
    if (!mkdtemp(m->redis_dir)) {
      log_error("redis_embedded_spawn_failed", "cannot create a directory for the embedded redis-server: %s", strerror(errno));
      return 1;
    }
    snprintf(m->redis_sock, sizeof(m->redis_sock), "%s/redis.sock", m->redis_dir);
    snprintf(m->redis_env, sizeof(m->redis_env), "TIDINGS_REDIS=unix:%s", m->redis_sock);
    m->env[k++] = m->redis_env;
  }
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "TIDINGS_WORKER_ID=", 18) && strncmp(environ[i], "TIDINGS_MASTER_PID=", 19) &&
        strncmp(environ[i], "TIDINGS_SHM_ROW=", 16))
      m->env[k++] = environ[i];
  m->env[k] = NULL;
  /* uv_spawn stops at the first NULL: keep slot 0 filled while spawning */

  m->loop = uv_default_loop();
  uv_signal_t *sigs[] = {&m->sig_term, &m->sig_int, &m->sig_hup};
  int nums[] = {SIGTERM, SIGINT, SIGHUP};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(m->loop, sigs[i]);
    sigs[i]->data = m;
    uv_signal_start(sigs[i], on_signal, nums[i]);
  }
  uv_timer_init(m->loop, &m->kill_timer);
  m->kill_timer.data = m;
  if (strcmp(m->cfg->admin_listen, "off") != 0 && m->cfg->admin_listen[0]) {
    char err[256];
    if (admin_start(m->loop, m->cfg->admin_listen, &m->view, &m->admin, err, sizeof(err)) < 0) {
      fprintf(stderr, "tidings: %s\n", err);
      if (m->embedded) rmdir(m->redis_dir);
      exit(EXIT_CONFIG); /* before any child exists */
    }
    log_info("admin_listen", "admin listener on %s: /metrics /healthz /readyz /status", m->cfg->admin_listen);
  }
  for (int i = 0; i < m->nslots; i++) {
    uv_timer_init(m->loop, &m->slots[i].restart);
    m->slots[i].restart.data = m;
  }
  if (m->embedded) {
    uv_timer_init(m->loop, &m->redis_timer);
    m->redis_timer.data = m;
    spawn_redis(m);
  } else {
    start_workers(m);
  }
  uv_run(m->loop, UV_RUN_DEFAULT);
  uv_loop_close(m->loop);
  shm_detach(m->shm);
  close(m->shm_fd);
  free(m->env);
  free(m);
  log_info("exit", "all workers stopped, exiting");
  return 0;
}

const char *master_find_redis_server(void) {
  static char path[4096];
  const char *env = getenv("TIDINGS_REDIS_SERVER");
  if (env && *env) return access(env, X_OK) == 0 ? env : NULL;
  const char *p = getenv("PATH");
  if (!p || !*p) p = "/usr/local/bin:/usr/bin:/bin";
  while (*p) {
    const char *e = strchr(p, ':');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    snprintf(path, sizeof(path), "%.*s/redis-server", (int)n, p);
    if (n && access(path, X_OK) == 0) return path;
    p += n + (e ? 1 : 0);
  }
  if (access("/usr/bin/redis-server", X_OK) == 0) return "/usr/bin/redis-server";
  return NULL;
}
