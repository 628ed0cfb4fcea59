/* loadgen: a WebSocket load generator for tidings.
 *
 * Opens --subs subscriber connections (subscriber i on topic
 * "<prefix><i % topics>") and --pubs publisher connections, publishes
 * {"seq":N,"ts":NANOS,"pad":"..."} payloads round-robin over the topics for
 * --warmup + --duration seconds, and checks that every subscriber receives
 * every message published to its topic inside the measurement window
 * exactly once, measuring publish-to-delivery latency.  --idle only holds
 * subscribed connections and measures the server's memory per connection.
 * See README.md beside this file. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "loadgen.h"

struct global g;

static uv_timer_t t_open, t_main, t_pace, t_prog;
static uv_signal_t sig_int, sig_term;
static uint64_t setup_deadline, drain_deadline, close_deadline;
static int interrupted, exit_code;

/* measurement snapshots */
static double cpu_start, cpu_end; /* loadgen user+sys seconds */
static uint64_t wall_start, wall_end;
static long long srv_rss_before = -1, srv_rss_after = -1, srv_rss_end = -1;
static long long srv_cpu_start = -1, srv_cpu_end = -1;
static size_t srv_nprocs_before, srv_nprocs_after;
static uint64_t subs_counted;
static uint64_t prog_pub, prog_deliv, prog_t;
static int measured; /* the window was reached and ended */

#define INFO(...)                        \
  do {                                   \
    if (!g.o.quiet) lg_log(__VA_ARGS__); \
  } while (0)

/* ---------------- small helpers ---------------- */

void lg_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%7.2fs] ", g.t_run0 ? (double)(now_ns() - g.t_run0) / 1e9 : 0.0);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* sums VmRSS (or CPU ticks) over --server-pids and, with --server-tree,
 * their descendants; -1 without --server-pids */
static long long server_sum(int cpu, size_t *nprocs) {
  if (!g.o.npids) return -1;
  pid_t list[4096];
  size_t n = proc_expand(g.o.pids, g.o.npids, g.o.tree, list, sizeof(list) / sizeof(list[0]));
  long long sum = 0;
  size_t alive = 0;
  for (size_t i = 0; i < n; i++) {
    long long v = cpu ? proc_cpu_ticks(list[i]) : proc_rss_bytes(list[i]);
    if (v >= 0) {
      sum += v;
      alive++;
    }
  }
  if (nprocs) *nprocs = alive;
  return alive ? sum : -1;
}

static uint64_t expected_total(void) {
  uint64_t e = 0;
  for (uint32_t t = 0; t < g.o.topics; t++) e += g.exp_topic[t] * g.subs_on_topic[t];
  return e;
}

/* ---------------- setup ---------------- */

void lg_open_more(void) {
  static int busy;
  if (busy || g.phase != PH_SETUP) return;
  busy = 1;
  uint64_t now = now_ns();
  while (g.next_open < g.nconns && g.inflight_hs < g.o.max_hs) {
    if (g.o.connect_rate > 0) {
      double allowed = (double)(now - g.t_open0) / 1e9 * g.o.connect_rate + 1;
      if ((double)g.next_open >= allowed) break;
    }
    conn_start(&g.conns[g.next_open++]);
  }
  busy = 0;
}

void lg_on_resolved(void) { g.resolved++; }

void lg_on_ready(struct conn *c) {
  c->ready = 1;
  if (c->resolved) return;
  c->resolved = 1;
  if (c->role == ROLE_SUB) g.subscribed++;
  lg_on_resolved();
}

static void on_open_tick(uv_timer_t *t) {
  (void)t;
  lg_open_more();
}

static void pace_tick(uv_timer_t *t);

static void start_measure(uint64_t now) {
  g.phase = PH_MEASURE;
  wall_start = now;
  cpu_start = cpu_seconds();
  srv_cpu_start = server_sum(1, NULL);
  subs_counted = 0;
  for (uint32_t i = 0; i < g.o.subs; i++) {
    struct conn *c = &g.conns[i];
    if (c->ready && c->state == CS_READY) {
      c->counted = 1;
      g.subs_on_topic[c->topic]++;
      subs_counted++;
    }
  }
  INFO("measuring for %.1f s", g.o.duration);
}

static void begin_closing(uint64_t now) {
  if (g.phase >= PH_CLOSING) return;
  g.phase = PH_CLOSING;
  uv_timer_stop(&t_pace);
  uv_timer_stop(&t_open);
  for (size_t i = 0; i < g.nconns; i++) {
    struct conn *c = &g.conns[i];
    if (c->state == CS_IDLE || c->state == CS_DEAD) continue;
    conn_send_close(c, 1000);
  }
  close_deadline = now + 3000000000ull;
}

static void setup_done(uint64_t now) {
  uv_timer_stop(&t_open);
  uint64_t failed = 0, pubs_ready = 0;
  for (int r = 1; r < FAIL__N; r++) failed += g.nfail[r];
  for (uint32_t i = 0; i < g.o.pubs; i++)
    if (g.conns[g.o.subs + i].state == CS_READY) pubs_ready++;
  INFO("setup: %" PRIu64 " established, %" PRIu64 " subscribed, %" PRIu64
       " publishers ready, %" PRIu64 " failed",
       g.established, g.subscribed, pubs_ready, failed);
  if (failed > g.o.max_failures) exit_code = 1;
  if ((g.o.subs && !g.subscribed) || (g.o.pubs && !pubs_ready)) {
    lg_log("setup failed: %s",
           g.o.subs && !g.subscribed ? "no subscriber is ready" : "no publisher is ready");
    exit_code = 1;
    begin_closing(now);
    return;
  }
  srv_rss_after = server_sum(0, &srv_nprocs_after);
  if (g.o.idle) {
    g.t_start = now;
    g.t_end = now + (uint64_t)(g.o.duration * 1e9);
    start_measure(now);
    return;
  }
  g.phase = PH_WARMUP;
  g.t_pub0 = now;
  g.t_start = now + (uint64_t)(g.o.warmup * 1e9);
  g.t_end = g.t_start + (uint64_t)(g.o.duration * 1e9);
  if (g.o.warmup > 0) INFO("warming up for %.1f s", g.o.warmup);
  if (g.o.e2e) {
    /* the subscribers each message must reach: those ready now */
    for (uint32_t i = 0; i < g.o.subs; i++) {
      struct conn *c = &g.conns[i];
      if (c->state != CS_READY) continue;
      c->e2e_counted = 1;
      g.e2e_need[c->topic]++;
    }
    for (uint32_t i = 0; i < g.o.pubs; i++) {
      struct conn *c = &g.conns[g.o.subs + i];
      c->e2e_low = c->s_next;
      c->ring = calloc(g.o.window, sizeof(struct e2e_slot));
      if (!c->ring) {
        lg_log("out of memory");
        exit(1);
      }
    }
  }
  if (g.o.rate > 0 && g.o.pubs) {
    uv_timer_start(&t_pace, pace_tick, 0, 1);
  } else {
    for (uint32_t i = 0; i < g.o.pubs; i++) pub_pump(&g.conns[g.o.subs + i]);
  }
}

static void timeout_setup(void) {
  for (size_t i = 0; i < g.nconns; i++) {
    struct conn *c = &g.conns[i];
    if (c->resolved) continue;
    if (c->state == CS_IDLE) {
      c->resolved = 1;
      c->fail = FAIL_TIMEOUT;
      g.nfail[FAIL_TIMEOUT]++;
      g.resolved++;
    } else {
      conn_fail(c, FAIL_TIMEOUT, "not ready within %.0f s", g.o.setup_timeout);
    }
  }
  g.next_open = g.nconns;
}

/* ---------------- publishing ---------------- */

static void pace_tick(uv_timer_t *t) {
  (void)t;
  if (g.phase != PH_WARMUP && g.phase != PH_MEASURE) return;
  uint64_t now = now_ns();
  if (now >= g.t_end) return;
  double per_pub = g.o.rate / g.o.pubs;
  /* more than 100 ms behind schedule: skip rather than burst */
  uint64_t cap = (uint64_t)(per_pub * 0.1) + 16;
  double el = (double)(now - g.t_pub0) / 1e9;
  for (uint32_t i = 0; i < g.o.pubs; i++) {
    struct conn *c = &g.conns[g.o.subs + i];
    if (c->state != CS_READY) continue;
    /* stagger the publishers within one period */
    uint64_t target = (uint64_t)(el * per_pub + (double)i / g.o.pubs) + 1;
    if (target <= c->sched) continue;
    uint64_t n = target - c->sched;
    c->sched = target;
    /* a server that does not read: do not pile up more than a few MB */
    if (c->out[c->cur].len > (8u << 20)) {
      g.rate_skipped += n;
      continue;
    }
    if (n > cap) {
      g.rate_skipped += n - cap;
      n = cap;
    }
    pub_send_batch(c, n, now);
  }
}

static int drained(void) {
  for (uint32_t i = 0; i < g.o.pubs; i++) {
    struct conn *c = &g.conns[g.o.subs + i];
    if (c->state == CS_READY && c->acks + c->errs < c->s_next) return 0;
  }
  return g.uniq_total >= expected_total();
}

static void end_measure(uint64_t now) {
  measured = 1;
  wall_end = now;
  cpu_end = cpu_seconds();
  srv_cpu_end = server_sum(1, NULL);
  uv_timer_stop(&t_pace);
  if (g.o.idle) {
    srv_rss_end = server_sum(0, NULL);
    begin_closing(now);
    return;
  }
  g.phase = PH_DRAIN;
  drain_deadline = now + (uint64_t)(g.o.grace * 1e9);
}

static void finish(void) {
  for (size_t i = 0; i < g.nconns; i++) {
    struct conn *c = &g.conns[i];
    if (c->state != CS_IDLE && c->state != CS_DEAD) conn_close(c);
  }
  g.phase = PH_DONE;
  uv_close((uv_handle_t *)&t_open, NULL);
  uv_close((uv_handle_t *)&t_main, NULL);
  uv_close((uv_handle_t *)&t_pace, NULL);
  uv_close((uv_handle_t *)&t_prog, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
  uv_close((uv_handle_t *)&sig_term, NULL);
  rx_stop();
}

static void main_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = now_ns();
  switch (g.phase) {
    case PH_SETUP:
      if (g.resolved < g.nconns && now >= setup_deadline) timeout_setup();
      if (g.resolved >= g.nconns) setup_done(now);
      break;
    case PH_WARMUP:
    case PH_MEASURE:
      e2e_expire(now);
      if (g.open_handles == 0) { /* nothing left to measure */
        lg_log("all connections are gone: stopping");
        exit_code = 1;
        if (g.phase == PH_WARMUP) {
          begin_closing(now);
          break;
        }
        g.t_end = now;
      }
      if (g.phase == PH_WARMUP && now >= g.t_start) start_measure(now);
      if (g.phase == PH_MEASURE && now >= g.t_end) end_measure(now);
      break;
    case PH_DRAIN:
      e2e_expire(now);
      if (drained() || now >= drain_deadline) begin_closing(now);
      break;
    case PH_CLOSING:
      if (g.open_handles == 0 || now >= close_deadline) finish();
      break;
    case PH_DONE: break;
  }
}

static void prog_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = now_ns();
  double dt = (double)(now - prog_t) / 1e9;
  if (dt <= 0) return;
  static const char *names[] = {"setup", "warmup", "measure", "drain", "closing", "done"};
  uint64_t failed = 0;
  for (int r = 1; r < FAIL__N; r++) failed += g.nfail[r];
  if (g.phase == PH_SETUP)
    INFO("setup: %" PRIu64 "/%zu established, %" PRIu64 " subscribed, %" PRIu64
         " failed, %zu handshakes in flight",
         g.established, g.nconns, g.subscribed, failed, g.inflight_hs);
  else
    INFO("%s: publish %.0f/s, deliveries %.0f/s, open %zu, dropped %" PRIu64, names[g.phase],
         (double)(g.pub_total - prog_pub) / dt, (double)(g.deliv_total - prog_deliv) / dt,
         g.open_handles, g.dropped);
  prog_pub = g.pub_total;
  prog_deliv = g.deliv_total;
  prog_t = now;
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s;
  if (interrupted++) {
    fprintf(stderr, "loadgen: interrupted twice, exiting\n");
    _exit(128 + signum);
  }
  uint64_t now = now_ns();
  lg_log("signal %d: stopping", signum);
  exit_code = 128 + signum;
  if (g.phase == PH_MEASURE) {
    g.t_end = now;
    end_measure(now); /* still collects in-flight deliveries for --grace */
  } else if (g.phase < PH_CLOSING) {
    begin_closing(now);
  }
}

/* ---------------- options ---------------- */

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: loadgen [options]\n"
      "  --host H             server address (default 127.0.0.1)\n"
      "  --port N             server port (default 8080)\n"
      "  --path P             WebSocket path (default /)\n"
      "  --subs N             subscriber connections (default 100)\n"
      "  --topics K           topics; subscriber i takes topic <prefix><i %% K> (default 10)\n"
      "  --topic-prefix S     topic name prefix (default bench.)\n"
      "  --pubs P             publisher connections (default 1)\n"
      "  --rate R             publishes/s over all publishers; 0 = as fast as the\n"
      "                       window allows (default 1000)\n"
      "  --window W           rate 0: unacknowledged publishes per publisher (default 64)\n"
      "  --e2e                rate 0: a publish leaves the window when every subscriber\n"
      "                       of its topic has received it, not when it is acknowledged;\n"
      "                       reports publish-to-last-delivery latency\n"
      "  --size S             approximate payload size in bytes (default 100)\n"
      "  --warmup S           seconds of publishing before the window (default 2)\n"
      "  --duration S         seconds of measurement (default 10)\n"
      "  --grace S            seconds to wait for in-flight acks/deliveries (default 3)\n"
      "  --connect-rate N     connections opened per second; 0 = unlimited (default 0)\n"
      "  --max-handshakes N   handshakes in flight at most (default 500)\n"
      "  --setup-timeout S    seconds for all connections to be ready\n"
      "                       (default 30 + connections / connect-rate)\n"
      "  --max-failures N     setup failures tolerated before exiting 1 (default 0)\n"
      "  --idle               hold --subs subscribed connections for --duration; no publishers\n"
      "  --server-pids A,B    server pids whose VmRSS / CPU to report\n"
      "  --server-tree        include all descendants of --server-pids\n"
      "  --deflate            offer permessage-deflate (inflate compressed frames)\n"
      "  --read-time          latency ends when the loadgen reads a notification, not\n"
      "                       when the kernel stamped its arrival (SO_TIMESTAMPNS)\n"
      "  --http-pub KEY       publishers use tidings' HTTP API (POST /api/publish with\n"
      "                       keep-alive, --window requests pipelined per connection)\n"
      "                       instead of WebSocket; subscribers stay WebSocket\n"
      "  --src-addrs A,B      local addresses to bind, round-robin (more than ~28k\n"
      "                       connections to one server port)\n"
      "  --json               print all results as one JSON object on the last line\n"
      "  --quiet              no progress on stderr\n"
      "  --help\n");
}

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s == '-') return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *out) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  char ps[16];
  snprintf(ps, sizeof(ps), "%d", port);
  int rc = getaddrinfo(host, ps, &hints, &res);
  if (rc || !res) {
    fprintf(stderr, "loadgen: cannot resolve %s: %s\n", host, gai_strerror(rc));
    return -1;
  }
  memcpy(out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return 0;
}

static void die_usage(const char *opt, const char *val) {
  fprintf(stderr, "loadgen: bad value for --%s: '%s'\n", opt, val);
  exit(2);
}

static void parse_opts(int argc, char **argv) {
  struct opts *o = &g.o;
  o->host = "127.0.0.1";
  o->path = "/";
  o->prefix = "bench.";
  o->port = 8080;
  o->subs = 100;
  o->topics = 10;
  o->pubs = 1;
  o->window = 64;
  o->max_hs = 500;
  o->rate = 1000;
  o->duration = 10;
  o->warmup = 2;
  o->grace = 3;
  o->size = 100;
  o->setup_timeout = -1;
  enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_PATH,
    OPT_SUBS,
    OPT_TOPICS,
    OPT_PREFIX,
    OPT_PUBS,
    OPT_RATE,
    OPT_WINDOW,
    OPT_SIZE,
    OPT_WARMUP,
    OPT_DURATION,
    OPT_GRACE,
    OPT_CRATE,
    OPT_MAXHS,
    OPT_SETUPTO,
    OPT_MAXFAIL,
    OPT_IDLE,
    OPT_PIDS,
    OPT_TREE,
    OPT_DEFLATE,
    OPT_HTTP_PUB,
    OPT_E2E,
    OPT_READ_TIME,
    OPT_SRC,
    OPT_JSON,
    OPT_QUIET,
    OPT_HELP
  };
  static const struct option lo[] = {
      {"host", required_argument, 0, OPT_HOST},
      {"port", required_argument, 0, OPT_PORT},
      {"path", required_argument, 0, OPT_PATH},
      {"subs", required_argument, 0, OPT_SUBS},
      {"topics", required_argument, 0, OPT_TOPICS},
      {"topic-prefix", required_argument, 0, OPT_PREFIX},
      {"pubs", required_argument, 0, OPT_PUBS},
      {"rate", required_argument, 0, OPT_RATE},
      {"window", required_argument, 0, OPT_WINDOW},
      {"size", required_argument, 0, OPT_SIZE},
      {"warmup", required_argument, 0, OPT_WARMUP},
      {"duration", required_argument, 0, OPT_DURATION},
      {"grace", required_argument, 0, OPT_GRACE},
      {"connect-rate", required_argument, 0, OPT_CRATE},
      {"max-handshakes", required_argument, 0, OPT_MAXHS},
      {"setup-timeout", required_argument, 0, OPT_SETUPTO},
      {"max-failures", required_argument, 0, OPT_MAXFAIL},
      {"idle", no_argument, 0, OPT_IDLE},
      {"server-pids", required_argument, 0, OPT_PIDS},
      {"server-tree", no_argument, 0, OPT_TREE},
      {"deflate", no_argument, 0, OPT_DEFLATE},
      {"http-pub", required_argument, 0, OPT_HTTP_PUB},
      {"e2e", no_argument, 0, OPT_E2E},
      {"read-time", no_argument, 0, OPT_READ_TIME},
      {"src-addrs", required_argument, 0, OPT_SRC},
      {"json", no_argument, 0, OPT_JSON},
      {"quiet", no_argument, 0, OPT_QUIET},
      {"help", no_argument, 0, OPT_HELP},
      {0, 0, 0, 0},
  };
  const char *src_list = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    uint64_t u;
    double d;
    const char *name = opt >= OPT_HOST && opt <= OPT_HELP ? lo[opt - OPT_HOST].name : "?";
    switch (opt) {
      case OPT_HOST: o->host = optarg; break;
      case OPT_PATH:
        if (optarg[0] != '/' || strlen(optarg) > 512 || strpbrk(optarg, " \r\n"))
          die_usage(name, optarg);
        o->path = optarg;
        break;
      case OPT_PREFIX:
        if (strlen(optarg) > 100 || strpbrk(optarg, "\"\\\t\r\n")) die_usage(name, optarg);
        o->prefix = optarg;
        break;
      case OPT_PORT:
        if (parse_u64(optarg, 1, 65535, &u)) die_usage(name, optarg);
        o->port = (int)u;
        break;
      case OPT_SUBS:
        if (parse_u64(optarg, 0, 10000000, &u)) die_usage(name, optarg);
        o->subs = (uint32_t)u;
        break;
      case OPT_TOPICS:
        if (parse_u64(optarg, 1, 10000000, &u)) die_usage(name, optarg);
        o->topics = (uint32_t)u;
        break;
      case OPT_PUBS: /* the publisher index lives above bit 32 of seq: < 2^20 keeps it < 2^53 */
        if (parse_u64(optarg, 0, 1u << 20, &u)) die_usage(name, optarg);
        o->pubs = (uint32_t)u;
        break;
      case OPT_WINDOW:
        if (parse_u64(optarg, 1, 1000000, &u)) die_usage(name, optarg);
        o->window = (uint32_t)u;
        break;
      case OPT_MAXHS:
        if (parse_u64(optarg, 1, 1000000, &u)) die_usage(name, optarg);
        o->max_hs = (uint32_t)u;
        break;
      case OPT_MAXFAIL:
        if (parse_u64(optarg, 0, UINT64_MAX, &u)) die_usage(name, optarg);
        o->max_failures = u;
        break;
      case OPT_SIZE:
        if (parse_u64(optarg, 0, 64u << 20, &u)) die_usage(name, optarg);
        o->size = (size_t)u;
        break;
      case OPT_RATE:
        if (parse_double(optarg, 0, 1e9, &d)) die_usage(name, optarg);
        o->rate = d;
        break;
      case OPT_WARMUP:
        if (parse_double(optarg, 0, 86400, &d)) die_usage(name, optarg);
        o->warmup = d;
        break;
      case OPT_DURATION:
        if (parse_double(optarg, 0.01, 86400 * 7, &d)) die_usage(name, optarg);
        o->duration = d;
        break;
      case OPT_GRACE:
        if (parse_double(optarg, 0, 3600, &d)) die_usage(name, optarg);
        o->grace = d;
        break;
      case OPT_CRATE:
        if (parse_double(optarg, 0, 1e9, &d)) die_usage(name, optarg);
        o->connect_rate = d;
        break;
      case OPT_SETUPTO:
        if (parse_double(optarg, 0.1, 86400, &d)) die_usage(name, optarg);
        o->setup_timeout = d;
        break;
      case OPT_IDLE: o->idle = 1; break;
      case OPT_TREE: o->tree = 1; break;
      case OPT_DEFLATE: o->deflate = 1; break;
      case OPT_READ_TIME: o->read_time = 1; break;
      case OPT_HTTP_PUB: o->api_key = optarg; break;
      case OPT_E2E: o->e2e = 1; break;
      case OPT_JSON: o->json = 1; break;
      case OPT_QUIET: o->quiet = 1; break;
      case OPT_PIDS: {
        size_t cap = 1;
        for (const char *p = optarg; *p; p++) cap += *p == ',';
        o->pids = calloc(cap, sizeof(pid_t));
        if (!o->pids) exit(1);
        char *dup = strdup(optarg), *save = NULL;
        for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
          if (parse_u64(tok, 1, 1u << 30, &u)) die_usage(name, optarg);
          o->pids[o->npids++] = (pid_t)u;
        }
        free(dup);
        if (!o->npids) die_usage(name, optarg);
        break;
      }
      case OPT_SRC: src_list = optarg; break;
      case OPT_HELP: usage(stdout); exit(0);
      default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "loadgen: unexpected argument '%s'\n", argv[optind]);
    exit(2);
  }
  if (o->idle) o->pubs = 0;
  if (o->e2e && (o->idle || o->rate > 0)) {
    fprintf(stderr, "loadgen: --e2e needs --rate 0 (and no --idle)\n");
    exit(2);
  }
  if (o->subs + (uint64_t)o->pubs == 0) {
    fprintf(stderr, "loadgen: nothing to do: --subs and --pubs are both 0\n");
    exit(2);
  }
  if (src_list) {
    size_t cap = 1;
    for (const char *p = src_list; *p; p++) cap += *p == ',';
    o->src = calloc(cap, sizeof(*o->src));
    if (!o->src) exit(1);
    char *dup = strdup(src_list), *save = NULL;
    for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      struct sockaddr_storage *ss = &o->src[o->nsrc];
      if (uv_ip4_addr(tok, 0, (struct sockaddr_in *)ss) &&
          uv_ip6_addr(tok, 0, (struct sockaddr_in6 *)ss))
        die_usage("src-addrs", tok);
      o->nsrc++;
    }
    free(dup);
  }
  if (o->setup_timeout < 0)
    o->setup_timeout =
        30 + (o->connect_rate > 0 ? (double)(o->subs + o->pubs) / o->connect_rate : 0);
}

/* ---------------- report ---------------- */

struct jout {
  char *p;
  size_t len, cap;
};

static void jput(struct jout *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jput(struct jout *j, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->p + j->len, j->cap - j->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < j->cap - j->len) {
      j->len += (size_t)n;
      return;
    }
    size_t cap = (j->cap ? j->cap : 1024) * 2 + (size_t)n;
    char *q = realloc(j->p, cap);
    if (!q) return;
    j->p = q;
    j->cap = cap;
  }
}

static void jkey_u(struct jout *j, const char *k, uint64_t v) {
  jput(j, "%s\"%s\":%" PRIu64, j->len > 1 ? "," : "", k, v);
}
static void jkey_d(struct jout *j, const char *k, double v) {
  jput(j, "%s\"%s\":%.6g", j->len > 1 ? "," : "", k, isfinite(v) ? v : 0.0);
}
static void jkey_ll(struct jout *j, const char *k, long long v) {
  if (v < 0) jput(j, "%s\"%s\":null", j->len > 1 ? "," : "", k);
  else jput(j, "%s\"%s\":%lld", j->len > 1 ? "," : "", k, v);
}
static void jkey_s(struct jout *j, const char *k, const char *v) {
  jput(j, "%s\"%s\":\"", j->len > 1 ? "," : "", k);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (*p == '"' || *p == '\\') jput(j, "\\%c", *p);
    else if (*p < 0x20) jput(j, "\\u%04x", *p);
    else jput(j, "%c", *p);
  }
  jput(j, "\"");
}

/* <prefix>_p50_ms, _p99_ms, _p999_ms of h (and _max_ms, _mean_ms). */
static void jkey_hist(struct jout *j, const char *prefix, const struct hist *h, int max_mean) {
  static const struct {
    const char *name;
    double q;
  } qs[] = {{"p50", 0.50}, {"p99", 0.99}, {"p999", 0.999}};
  char k[64];
  for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
    snprintf(k, sizeof(k), "%s_%s_ms", prefix, qs[i].name);
    jkey_d(j, k, hist_quantile(h, qs[i].q) / 1e6);
  }
  if (!max_mean) return;
  snprintf(k, sizeof(k), "%s_max_ms", prefix);
  jkey_d(j, k, (double)h->max / 1e6);
  snprintf(k, sizeof(k), "%s_mean_ms", prefix);
  jkey_d(j, k, h->n ? h->sum / (double)h->n / 1e6 : 0);
}

static double mib(long long b) { return (double)b / (1024.0 * 1024.0); }

static void report(void) {
  /* rates over the window itself; CPU over the snapshots taken around it */
  double dur = measured && g.t_end > g.t_start ? (double)(g.t_end - g.t_start) / 1e9 : 0;
  double cwall = measured && wall_end > wall_start ? (double)(wall_end - wall_start) / 1e9 : 0;
  double cpu_pct = cwall > 0 ? (cpu_end - cpu_start) / cwall * 100 : 0;
  double total_wall = (double)(now_ns() - g.t_run0) / 1e9;
  double cpu_total_pct = total_wall > 0 ? cpu_seconds() / total_wall * 100 : 0;
  long tck = sysconf(_SC_CLK_TCK);
  double srv_cpu_pct = (srv_cpu_start >= 0 && srv_cpu_end >= 0 && cwall > 0 && tck > 0)
                           ? (double)(srv_cpu_end - srv_cpu_start) / (double)tck / cwall * 100
                           : -1;
  uint64_t failed = 0;
  for (int r = 1; r < FAIL__N; r++) failed += g.nfail[r];
  uint64_t expected = expected_total();
  uint64_t lost = expected > g.uniq_total ? expected - g.uniq_total : 0;
  uint64_t subs_with_loss = 0, acked_all = 0, unacked = 0;
  for (uint32_t i = 0; i < g.o.subs; i++) {
    struct conn *c = &g.conns[i];
    if (c->counted && c->uniq < g.exp_topic[c->topic]) subs_with_loss++;
  }
  for (uint32_t i = 0; i < g.o.pubs; i++) {
    struct conn *c = &g.conns[g.o.subs + i];
    acked_all += c->acks;
    if (c->s_first != UINT64_MAX && c->s_next > c->acks + c->errs) {
      uint64_t s0 = c->acks + c->errs > c->s_first ? c->acks + c->errs : c->s_first;
      unacked += c->s_next - s0;
    }
  }
  double p50 = hist_quantile(&g.lat, 0.50) / 1e6, p99 = hist_quantile(&g.lat, 0.99) / 1e6,
         p999 = hist_quantile(&g.lat, 0.999) / 1e6, pmax = (double)g.lat.max / 1e6,
         pmean = g.lat.n ? g.lat.sum / (double)g.lat.n / 1e6 : 0;
  double e50 = hist_quantile(&g.e2e_lat, 0.50) / 1e6, e99 = hist_quantile(&g.e2e_lat, 0.99) / 1e6,
         e999 = hist_quantile(&g.e2e_lat, 0.999) / 1e6, emax = (double)g.e2e_lat.max / 1e6,
         emean = g.e2e_lat.n ? g.e2e_lat.sum / (double)g.e2e_lat.n / 1e6 : 0;
  long long growth =
      srv_rss_before >= 0 && srv_rss_after >= 0 ? srv_rss_after - srv_rss_before : -1;
  uint64_t held = 0;
  for (uint32_t i = 0; i < g.o.subs; i++) held += g.conns[i].counted && !g.conns[i].dropped;
  long long per_conn = growth >= 0 && g.established ? growth / (long long)g.established : -1;

  printf("loadgen: ws://%s%s %s, %u subs on %u topics", g.hostport, g.o.path,
         g.o.idle ? "idle" : "pub/sub", g.o.subs, g.o.topics);
  if (!g.o.idle) {
    printf(", %u pubs, ", g.o.pubs);
    if (g.o.rate > 0) printf("rate %.0f/s", g.o.rate);
    else printf("max rate (window %u)", g.o.window);
    printf(", size %zu", g.o.size);
  }
  printf(", %s%.1f s\n", g.o.deflate ? "deflate, " : "", dur);
  printf("connections:  %" PRIu64 "/%zu established, %" PRIu64 " failed", g.established, g.nconns,
         failed);
  if (failed) {
    printf(" (");
    const char *sep = "";
    for (int r = 1; r < FAIL__N; r++)
      if (g.nfail[r]) {
        printf("%s%s %" PRIu64, sep, fail_name((enum fail_reason)r), g.nfail[r]);
        sep = ", ";
      }
    printf(")");
  }
  printf(", dropped %" PRIu64 ", server closes %" PRIu64 "\n", g.dropped, g.server_closes);
  if (g.o.idle) {
    printf("idle:         %" PRIu64 " subscribed connections held %.1f s, %" PRIu64
           " still open at the end\n",
           subs_counted, dur, held);
    if (g.o.npids) {
      printf(
          "server rss:   before %.1f MiB (%zu procs), after connecting %.1f MiB (%zu procs),"
          " at the end %.1f MiB\n",
          mib(srv_rss_before), srv_nprocs_before, mib(srv_rss_after), srv_nprocs_after,
          mib(srv_rss_end));
      printf("per conn:     %lld bytes of server RSS growth per connection\n", per_conn);
    }
  } else {
    printf("published:    %" PRIu64 " (%.1f/s), acked %" PRIu64 ", errors %" PRIu64
           ", unacked %" PRIu64,
           g.pub_window, dur > 0 ? (double)g.pub_window / dur : 0, g.acked_window, g.err_window,
           unacked);
    if (g.rate_skipped) printf(", behind schedule %" PRIu64, g.rate_skipped);
    printf("\n");
    if (g.first_error[0]) printf("first error:  %s\n", g.first_error);
    printf("deliveries:   %" PRIu64 " (%.1f/s), expected %" PRIu64 ", lost %" PRIu64 " (%" PRIu64
           " subs), duplicated %" PRIu64,
           g.deliv_window, dur > 0 ? (double)g.deliv_window / dur : 0, expected, lost,
           subs_with_loss, g.dup);
    if (g.o.deflate) printf(", compressed %" PRIu64 " (whole run)", g.inflated);
    if (g.unexpected || g.bad_msgs)
      printf(", unexpected %" PRIu64 ", unparsable %" PRIu64, g.unexpected, g.bad_msgs);
    printf("\n");
    printf("latency ms:   p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n", p50, p99, p999,
           pmax, pmean);
    if (g.o.e2e) {
      printf("end-to-end:   %" PRIu64
             " messages reached every subscriber (%.1f/s), expired %" PRIu64 "\n",
             g.e2e_done, dur > 0 ? (double)g.e2e_done / dur : 0, g.e2e_expired);
      printf(
          "e2e latency:  p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f ms (to the last "
          "subscriber)\n",
          e50, e99, e999, emax, emean);
    }
    if (g.o.npids)
      printf("server:       rss %.1f MiB before, %.1f MiB after setup, %.1f%% cpu\n",
             mib(srv_rss_before), mib(srv_rss_after), srv_cpu_pct);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  long long maxrss = (long long)ru.ru_maxrss * 1024;
  printf("loadgen:      %.1f%% of one core during the window (%.1f%% overall), max rss %.1f MiB\n",
         cpu_pct, cpu_total_pct, mib(maxrss));

  if (g.o.json) {
    struct jout j = {0};
    jput(&j, "{");
    jkey_s(&j, "mode", g.o.idle ? "idle" : "pubsub");
    jkey_s(&j, "publish_via", g.o.api_key ? "http" : "websocket");
    jkey_s(&j, "host", g.o.host);
    jkey_u(&j, "port", (uint64_t)g.o.port);
    jkey_u(&j, "subs", g.o.subs);
    jkey_u(&j, "topics", g.o.topics);
    jkey_u(&j, "pubs", g.o.pubs);
    jkey_d(&j, "rate", g.o.rate);
    jkey_u(&j, "window", g.o.window);
    jkey_u(&j, "size", g.o.size);
    jkey_u(&j, "deflate", (uint64_t)g.o.deflate);
    jkey_d(&j, "duration_s", dur);
    jkey_u(&j, "conn_established", g.established);
    jkey_u(&j, "conn_failed", failed);
    for (int r = 1; r < FAIL__N; r++) {
      char k[32];
      snprintf(k, sizeof(k), "conn_failed_%s", fail_name((enum fail_reason)r));
      jkey_u(&j, k, g.nfail[r]);
    }
    jkey_u(&j, "conn_dropped", g.dropped);
    jkey_u(&j, "server_closes", g.server_closes);
    jkey_u(&j, "subscribed", g.subscribed);
    jkey_u(&j, "published", g.pub_window);
    jkey_d(&j, "published_per_s", dur > 0 ? (double)g.pub_window / dur : 0);
    jkey_u(&j, "acked", g.acked_window);
    jkey_u(&j, "errors", g.err_window);
    jkey_u(&j, "unacked", unacked);
    jkey_u(&j, "published_total", g.pub_total);
    jkey_u(&j, "acked_total", acked_all);
    jkey_u(&j, "errors_total", g.pub_errors);
    jkey_u(&j, "behind_schedule", g.rate_skipped);
    jkey_u(&j, "deliveries", g.deliv_window);
    jkey_d(&j, "deliveries_per_s", dur > 0 ? (double)g.deliv_window / dur : 0);
    jkey_u(&j, "deliveries_total", g.deliv_total);
    jkey_u(&j, "expected", expected);
    jkey_u(&j, "lost", lost);
    jkey_u(&j, "subs_with_loss", subs_with_loss);
    jkey_u(&j, "duplicated", g.dup);
    jkey_u(&j, "reordered", g.reordered);
    jkey_u(&j, "unexpected", g.unexpected);
    jkey_u(&j, "unparsable", g.bad_msgs);
    jkey_hist(&j, "latency", &g.lat, 1);
    jkey_s(&j, "latency_ends", g.rx_stamped ? "arrival" : "read");
    jkey_u(&j, "reads_stamped", g.rx_stamped);
    jkey_hist(&j, "read_latency", &g.lat_read, 0);
    jkey_u(&j, "server_pings", g.pings);
    jkey_u(&j, "inflated", g.inflated);
    jkey_d(&j, "cpu_pct", cpu_pct);
    jkey_d(&j, "cpu_pct_overall", cpu_total_pct);
    jkey_ll(&j, "loadgen_maxrss", maxrss);
    jkey_ll(&j, "server_rss_before", srv_rss_before);
    jkey_ll(&j, "server_rss_after", srv_rss_after);
    jkey_ll(&j, "server_rss_end", srv_rss_end);
    jkey_ll(&j, "server_rss_growth", growth);
    jkey_ll(&j, "server_rss_per_conn", per_conn);
    if (srv_cpu_pct >= 0) jkey_d(&j, "server_cpu_pct", srv_cpu_pct);
    else jput(&j, ",\"server_cpu_pct\":null");
    jkey_u(&j, "held", held);
    jkey_u(&j, "e2e", (uint64_t)g.o.e2e);
    if (g.o.e2e) {
      jkey_u(&j, "e2e_messages", g.e2e_done);
      jkey_d(&j, "e2e_messages_per_s", dur > 0 ? (double)g.e2e_done / dur : 0);
      jkey_u(&j, "e2e_expired", g.e2e_expired);
      jkey_hist(&j, "e2e_latency", &g.e2e_lat, 1);
    }
    jkey_u(&j, "interrupted", (uint64_t)(interrupted != 0));
    jkey_u(&j, "exit_code", (uint64_t)exit_code);
    jput(&j, "}");
    if (j.p) printf("%s\n", j.p);
    free(j.p);
  }
  fflush(stdout);
}

/* ---------------- main ---------------- */

int main(int argc, char **argv) {
  parse_opts(argc, argv);
  g.t_run0 = now_ns();
  rng_seed(g.t_run0 ^ ((uint64_t)getpid() << 32));
  signal(SIGPIPE, SIG_IGN);

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      (uint64_t)g.o.subs + g.o.pubs + 32 > rl.rlim_cur)
    lg_log("warning: %u connections but only %llu file descriptors", g.o.subs + g.o.pubs,
           (unsigned long long)rl.rlim_cur);

  if (parse_addr(g.o.host, g.o.port, &g.addr) < 0) return 1;
  if (g.addr.ss_family == AF_INET6)
    snprintf(g.hostport, sizeof(g.hostport), "[%s]:%d", g.o.host, g.o.port);
  else snprintf(g.hostport, sizeof(g.hostport), "%s:%d", g.o.host, g.o.port);

  /* topics, padding, connections */
  g.topic_name = calloc(g.o.topics, sizeof(char *));
  g.topic_len = calloc(g.o.topics, sizeof(size_t));
  g.exp_topic = calloc(g.o.topics, sizeof(uint64_t));
  g.subs_on_topic = calloc(g.o.topics, sizeof(uint64_t));
  g.e2e_need = calloc(g.o.topics, sizeof(uint64_t));
  g.nconns = (size_t)g.o.subs + g.o.pubs;
  g.conns = calloc(g.nconns, sizeof(struct conn));
  if (!g.topic_name || !g.topic_len || !g.exp_topic || !g.subs_on_topic || !g.e2e_need ||
      !g.conns) {
    fprintf(stderr, "loadgen: out of memory\n");
    return 1;
  }
  for (uint32_t t = 0; t < g.o.topics; t++) {
    char buf[160];
    int n = snprintf(buf, sizeof(buf), "%s%u", g.o.prefix, t);
    g.topic_name[t] = strdup(buf);
    g.topic_len[t] = (size_t)n;
    if (!g.topic_name[t]) return 1;
  }
  /* {"seq":S,"ts":T,"pad":"..."}: 23 bytes of syntax plus the digits of
   * S (about 10) and T (about 14) */
  g.padlen = g.o.size > 47 ? g.o.size - 47 : 0;
  g.pad = malloc(g.padlen + 1);
  if (!g.pad) return 1;
  memset(g.pad, 'x', g.padlen);
  for (size_t i = 0; i < g.nconns; i++) {
    struct conn *c = &g.conns[i];
    c->role = i < g.o.subs ? ROLE_SUB : ROLE_PUB;
    c->idx = (uint32_t)(i < g.o.subs ? i : i - g.o.subs);
    c->topic = c->role == ROLE_SUB ? c->idx % g.o.topics : 0;
    c->s_first = UINT64_MAX;
    c->state = CS_IDLE;
  }
  g.t_start = g.t_end = UINT64_MAX;

  g.loop = uv_default_loop();
  uv_timer_init(g.loop, &t_open);
  uv_timer_init(g.loop, &t_main);
  uv_timer_init(g.loop, &t_pace);
  uv_timer_init(g.loop, &t_prog);
  uv_signal_init(g.loop, &sig_int);
  uv_signal_init(g.loop, &sig_term);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_term, on_signal, SIGTERM);

  srv_rss_before = server_sum(0, &srv_nprocs_before);
  if (g.o.npids && srv_rss_before < 0) lg_log("warning: cannot read /proc of --server-pids");
  INFO("opening %zu connections to %s%s", g.nconns, g.hostport,
       g.o.deflate ? " (offering permessage-deflate)" : "");
  if (rx_start() < 0) lg_log("warning: no kernel arrival times: latency ends at the read");
  g.phase = PH_SETUP;
  g.t_open0 = now_ns();
  setup_deadline = g.t_open0 + (uint64_t)(g.o.setup_timeout * 1e9);
  prog_t = g.t_open0;
  lg_open_more();
  if (g.next_open < g.nconns) uv_timer_start(&t_open, on_open_tick, 1, 1);
  uv_timer_start(&t_main, main_tick, 10, 10);
  if (!g.o.quiet) uv_timer_start(&t_prog, prog_tick, 1000, 1000);

  uv_run(g.loop, UV_RUN_DEFAULT);

  report();
  uv_loop_close(g.loop);
  for (size_t i = 0; i < g.nconns; i++) {
    free(g.conns[i].trk);
    free(g.conns[i].ring);
  }
  free(g.conns);
  for (uint32_t t = 0; t < g.o.topics; t++) free(g.topic_name[t]);
  free(g.topic_name);
  free(g.topic_len);
  free(g.exp_topic);
  free(g.subs_on_topic);
  free(g.e2e_need);
  free(g.pad);
  free(g.o.pids);
  free(g.o.src);
  ws_cleanup();
  return exit_code;
}
