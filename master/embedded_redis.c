#include "embedded_redis.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/backoff.h"
#include "../common/log.h"

/* Restarts after a death: 100 ms doubling up to 30 s; a server that lived
 * REDIS_STABLE_MS starts the count again. */
static const struct backoff redis_backoff = {.min_ms = 100, .max_ms = 30000, .jitter = 0};
#define REDIS_STABLE_MS 10000
#define REDIS_SPAWN_RETRY_MS 30000   /* after uv_spawn() itself failed */
#define REDIS_READY_FIRST_POLL_MS 10 /* the first look at the socket */
#define REDIS_READY_POLL_MS 20
#define REDIS_READY_TIMEOUT_MS 5000 /* then the workers start anyway and reconnect */
#define REDIS_DIR_TEMPLATE "/tmp/tidings-XXXXXX"
#define PATH_MAX_LEN 4096

static void spawn(struct embedded_redis *r);

static void handle_closed(struct embedded_redis *r) {
  assert(r->handles > 0);
  if (--r->handles == 0 && r->stopping) r->on_stopped(r);
}

static void on_timer_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_proc_closed(uv_handle_t *h) {
  struct embedded_redis *r = h->data;
  r->proc_open = 0;
  handle_closed(r);
}

static void schedule(struct embedded_redis *r, uv_timer_cb cb, uint64_t ms) {
  int rc = uv_timer_start(&r->timer, cb, ms, 0);
  if (rc < 0)
    log_error("redis_embedded_timer_failed", "embedded redis-server: %s", uv_strerror(rc));
}

/* Whether the socket accepts connections yet.  A unix socket's connect()
 * answers at once, so this does not block the loop. */
static int answers(const struct embedded_redis *r) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", r->sock);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

static void on_timer(uv_timer_t *t) {
  struct embedded_redis *r = t->data;
  assert(!r->no_restart); /* which stops the timer */
  if (!r->running) {
    spawn(r);
    return;
  }
  if (r->ready) return;
  int ok = answers(r);
  if (ok || ++r->polls >= REDIS_READY_TIMEOUT_MS / REDIS_READY_POLL_MS) {
    if (!ok)
      log_warn("redis_embedded_slow",
               "embedded redis-server not answering after %d s; starting workers anyway",
               REDIS_READY_TIMEOUT_MS / 1000);
    r->ready = 1;
    r->on_ready(r);
    return;
  }
  schedule(r, on_timer, REDIS_READY_POLL_MS);
}

/* Once the server is gone for good: its files, then the last handle. */
static void finish(struct embedded_redis *r) {
  if (unlink(r->sock) < 0 && errno != ENOENT)
    log_warn("redis_embedded_cleanup", "cannot remove %s: %s", r->sock, strerror(errno));
  if (rmdir(r->dir) < 0 && errno != ENOENT)
    log_warn("redis_embedded_cleanup", "cannot remove %s: %s", r->dir, strerror(errno));
  uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  struct embedded_redis *r = p->data;
  assert(r->running);
  r->running = 0;
  uv_close((uv_handle_t *)p, on_proc_closed);
  if (r->no_restart) {
    log_info("redis_embedded_exit", "embedded redis-server exited");
    if (r->stopping) finish(r); /* else embedded_redis_stop() will */
    return;
  }
  if (sig)
    log_error("redis_embedded_crash", "embedded redis-server (pid %d) was killed by signal %d",
              p->pid, sig);
  else
    log_error("redis_embedded_crash", "embedded redis-server (pid %d) exited with status %lld",
              p->pid, (long long)status);
  if (uv_now(r->loop) - r->started >= REDIS_STABLE_MS) r->failures = 0;
  uint64_t delay = backoff_delay(&redis_backoff, r->failures, 0);
  r->failures++;
  log_info("redis_embedded_restart", "restarting embedded redis-server in %llu ms",
           (unsigned long long)delay);
  schedule(r, on_timer, delay);
}

static void spawn(struct embedded_redis *r) {
  /* the last process handle was closed before any timer could fire */
  assert(!r->running && !r->proc_open && !r->no_restart);
  const char *args[] = {"tidings-redis", r->server, "--port", "0", "--unixsocket", r->sock,
                        "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir",
                        r->dir, "--daemonize", "no", "--loglevel", "warning", "--databases", "1",
                        /* a worker busy writing to its clients may fall behind for a
                         * moment: give its subscriber connection room before Redis
                         * cuts it (and messages are lost) */
                        "--client-output-buffer-limit", "pubsub 256mb 64mb 60", NULL};
  const char *env[] = {"TIDINGS_EXEC_SHIM=1", r->pidvar, NULL};
  uv_stdio_container_t stdio[3] = {{UV_IGNORE, {0}},
                                   {r->quiet ? UV_IGNORE : UV_INHERIT_FD, {.fd = 2}},
                                   {r->quiet ? UV_IGNORE : UV_INHERIT_FD, {.fd = 2}}};
  uv_process_options_t o = {0};
  o.exit_cb = on_exit_cb;
  o.file = "/proc/self/exe";
  o.args = (char **)args; /* libuv does not write to them */
  o.env = (char **)env;
  o.stdio = stdio;
  o.stdio_count = 3;
  r->proc.data = r;
  int rc = uv_spawn(r->loop, &r->proc, &o);
  /* the handle belongs to the loop now, spawned or not: it is closed either way */
  r->proc_open = 1;
  r->handles++;
  if (rc < 0) {
    log_error("redis_embedded_spawn_failed", "cannot start %s: %s", r->server, uv_strerror(rc));
    uv_close((uv_handle_t *)&r->proc, on_proc_closed);
    r->failures++;
    schedule(r, on_timer, REDIS_SPAWN_RETRY_MS);
    return;
  }
  r->running = 1;
  r->started = uv_now(r->loop);
  r->polls = 0;
  log_info("redis_embedded_start", "embedded redis-server started (pid %d) on unix:%s", r->proc.pid,
           r->sock);
  if (!r->ready) schedule(r, on_timer, REDIS_READY_FIRST_POLL_MS);
}

int embedded_redis_init(struct embedded_redis *r, uv_loop_t *loop, const char *server,
                        const char *pidvar, int quiet, char *err, size_t errlen) {
  memset(r, 0, sizeof(*r));
  r->loop = loop;
  r->server = server;
  r->pidvar = pidvar;
  r->quiet = quiet;
  snprintf(r->dir, sizeof(r->dir), "%s", REDIS_DIR_TEMPLATE);
  if (!mkdtemp(r->dir)) {
    int e = errno;
    snprintf(err, errlen, "cannot create a directory for the embedded redis-server: %s",
             strerror(e));
    return -e;
  }
  int n = snprintf(r->sock, sizeof(r->sock), "%s/redis.sock", r->dir);
  assert(n > 0 && (size_t)n < sizeof(r->sock));
  (void)n; /* only checked in builds with assertions */
  return 0;
}

int embedded_redis_start(struct embedded_redis *r) {
  assert(r->on_ready && r->on_stopped && r->handles == 0);
  int rc = uv_timer_init(r->loop, &r->timer);
  if (rc < 0) return rc;
  r->timer.data = r;
  r->handles = 1;
  spawn(r);
  return 0;
}

void embedded_redis_no_restart(struct embedded_redis *r) {
  if (r->no_restart) return;
  assert(r->handles > 0); /* started */
  r->no_restart = 1;
  uv_timer_stop(&r->timer); /* a pending restart or readiness poll */
}

void embedded_redis_stop(struct embedded_redis *r) {
  if (r->stopping) return;
  embedded_redis_no_restart(r);
  r->stopping = 1;
  if (!r->running) {
    finish(r);
    return;
  }
  int rc = uv_process_kill(&r->proc, SIGTERM);
  if (rc < 0 && rc != UV_ESRCH) /* ESRCH: it is exiting; on_exit_cb follows */
    log_warn("redis_embedded_kill_failed", "embedded redis-server (pid %d): %s", r->proc.pid,
             uv_strerror(rc));
}

void embedded_redis_discard(struct embedded_redis *r) {
  assert(r->handles == 0);
  if (rmdir(r->dir) < 0 && errno != ENOENT)
    log_warn("redis_embedded_cleanup", "cannot remove %s: %s", r->dir, strerror(errno));
}

const char *embedded_redis_find(void) {
  static char path[PATH_MAX_LEN];
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
