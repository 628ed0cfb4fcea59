#include "admin_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../common/metrics.h"
#include "../common/redisaddr.h"
#include "../common/shard.h"

/* ---- a growable string ----
 * Private to this file: nothing else in the master builds text whose
 * length it cannot bound.  After the first failed allocation every append
 * is skipped and sb_take() reports it, so the renderers check once. */

#define SB_FIRST_CAP 4096

struct sb {
  char *p;
  size_t len, cap;
  int failed;
};

static void sb_printf(struct sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *s, const char *fmt, ...) {
  if (s->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      s->failed = 1; /* an encoding error: fail the whole rendering */
      return;
    }
    if (s->p && s->len + (size_t)n < s->cap) {
      s->len += (size_t)n;
      return;
    }
    size_t ncap = (s->cap ? s->cap * 2 : SB_FIRST_CAP) + (size_t)n;
    char *np = realloc(s->p, ncap);
    if (!np) {
      s->failed = 1;
      return;
    }
    s->p = np;
    s->cap = ncap;
  }
}

/* Hands the string to the caller: 0, or UV_ENOMEM with nothing to free. */
static int sb_take(struct sb *s, char **out, size_t *len) {
  if (s->failed || !s->p) {
    free(s->p);
    return UV_ENOMEM;
  }
  *out = s->p;
  *len = s->len;
  return 0;
}

/* ---- reading shared memory ---- */

static uint64_t load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* A slot's total over all its rows (workers retired by reloads keep their
 * totals in theirs), so the slot's counters never go down. */
static uint64_t slot_counter(const struct admin_view *v, int slot, int k) {
  const struct shm *s = v->shm;
  uint64_t t = 0;
  for (unsigned r = (unsigned)slot; r < s->nrows; r += (unsigned)v->nslots)
    t += load64(&s->rows[r].m.c[k]);
  return t;
}

/* A gauge: of the slot's current worker, or (all) summed with those still
 * draining after a reload; rows of exited workers are zeroed by the master. */
static int64_t slot_gauge(const struct admin_view *v, int slot, int k, int all) {
  const struct shm *s = v->shm;
  if (!all) return __atomic_load_n(&s->rows[v->row[slot]].m.g[k], __ATOMIC_RELAXED);
  int64_t t = 0;
  for (unsigned r = (unsigned)slot; r < s->nrows; r += (unsigned)v->nslots)
    t += __atomic_load_n(&s->rows[r].m.g[k], __ATOMIC_RELAXED);
  return t;
}

static uint64_t restarts(const struct admin_view *v) {
  return __atomic_load_n(&v->shm->worker_restarts, __ATOMIC_RELAXED);
}

/* ---- Prometheus ---- */

static const struct {
  int k;
  const char *name, *help;
} counters[] = {
    {M_CONNECTIONS_TOTAL, "tidings_connections_total", "WebSocket connections opened."},
    {M_MESSAGES_IN, "tidings_messages_received_total",
     "WebSocket data messages received from clients."},
    {M_BYTES_IN, "tidings_received_bytes_total", "Bytes received from clients, as on the wire."},
    {M_BYTES_OUT, "tidings_sent_bytes_total",
     "Bytes sent to clients, as on the wire (after compression)."},
    {M_BYTES_OUT_RAW, "tidings_notification_bytes_total",
     "Notification bytes queued to subscribers, before compression."},
    {M_PUBLISHES, "tidings_publishes_total", "Publishes from clients accepted by Redis."},
    {M_PUBLISH_ERRORS, "tidings_publish_errors_total",
     "Publishes answered with an error (Redis unavailable)."},
    {M_BUS_MESSAGES, "tidings_bus_messages_total", "Messages received from Redis."},
    {M_DELIVERIES, "tidings_deliveries_total", "Notifications queued to subscribers."},
    {M_SLOW_DROPPED, "tidings_slow_dropped_total",
     "Notifications skipped for subscribers over --max-queued-bytes."},
    {M_SLOW_DISCONNECTS, "tidings_slow_disconnects_total",
     "Subscribers disconnected (1013) for being slow."},
    {M_RATE_LIMITED, "tidings_rate_limited_total",
     "Messages refused by the per-connection rate limit."},
    {M_REDIS_RECONNECTS, "tidings_redis_reconnects_total",
     "Redis connections re-established after a loss."},
    {M_HISTORY_DUPLICATES, "tidings_history_duplicates_total",
     "Messages of a topic with history dropped because their offset was already delivered."},
    {M_HISTORY_CATCHUPS, "tidings_history_catchups_total",
     "History reads to fill a gap in a topic's offsets (or after a re-subscription)."},
    {M_RESUMES, "tidings_resumes_total", "Subscribes with \"since\" answered recovered:true."},
    {M_RESUMES_FAILED, "tidings_resumes_failed_total",
     "Subscribes with \"since\" answered recovered:false."},
};

/* ---- shards ---- */

void admin_view_shards(struct admin_view *v, const char *redis, int cluster) {
  struct shard_url urls[SHARDS_MAX];
  char err[256];
  int n = redis[0] ? shard_split(redis, urls, err, sizeof(err)) : 0;
  v->nshards = n > 0 ? n : 1;
  v->cluster = cluster;
  snprintf(v->shard[0], sizeof(v->shard[0]), "embedded");
  if (cluster) { /* the masters come and go: each worker says which it uses */
    v->nshards = SHARDS_MAX;
    for (int i = 0; i < SHARDS_MAX; i++) snprintf(v->shard[i], sizeof(v->shard[i]), "cluster");
    return;
  }
  for (int i = 0; i < n; i++) {
    struct redis_addr ra;
    char one[1024];
    snprintf(one, sizeof(one), "%.*s", (int)urls[i].n, urls[i].p);
    if (redis_addr_parse(one, &ra, err, sizeof(err)) == 0)
      redis_addr_describe(&ra, v->shard[i], sizeof(v->shard[i]));
  }
}

/* 0 not in use, 1 down, 2 ready (metric_shard) */
static int shard_state(const struct admin_view *v, int slot, int shard) {
  return v->pid[slot]
             ? __atomic_load_n(&v->shm->rows[v->row[slot]].m.shard_up[shard], __ATOMIC_RELAXED)
             : !v->cluster; /* a worker that is not there has its shards down */
}

static int shard_up(const struct admin_view *v, int slot, int shard) {
  return shard_state(v, slot, shard) == 2;
}

/* A shard any worker uses (with --redis, every one). */
static int shard_used(const struct admin_view *v, int shard) {
  if (!v->cluster) return 1;
  for (int i = 0; i < v->nslots; i++)
    if (shard_state(v, i, shard)) return 1;
  return 0;
}

int admin_metrics_text(const struct admin_view *v, char **text, size_t *len) {
  struct sb s = {0};
  sb_printf(&s,
            "# HELP tidings_connections Open WebSocket connections.\n"
            "# TYPE tidings_connections gauge\n");
  for (int i = 0; i < v->nslots; i++)
    sb_printf(&s, "tidings_connections{worker=\"%d\"} %lld\n", i + 1,
              (long long)slot_gauge(v, i, G_CONNECTIONS, 1));
  sb_printf(&s,
            "# HELP tidings_redis_connected 1 when the worker's Redis connections are up.\n"
            "# TYPE tidings_redis_connected gauge\n");
  for (int i = 0; i < v->nslots; i++)
    sb_printf(&s, "tidings_redis_connected{worker=\"%d\"} %lld\n", i + 1,
              v->pid[i] ? (long long)slot_gauge(v, i, G_REDIS_CONNECTED, 0) : 0LL);
  sb_printf(&s,
            "# HELP tidings_redis_shard_up 1 when the worker's connections to the Redis shard "
            "are up (its topics work).\n"
            "# TYPE tidings_redis_shard_up gauge\n");
  for (int i = 0; i < v->nslots; i++)
    for (int k = 0; k < v->nshards; k++)
      if (shard_used(v, k))
        sb_printf(&s, "tidings_redis_shard_up{worker=\"%d\",shard=\"%d\",server=\"%s\"} %d\n",
                  i + 1, k, v->shard[k], shard_up(v, i, k));
  sb_printf(&s,
            "# HELP tidings_topics Topics with local subscribers.\n"
            "# TYPE tidings_topics gauge\n");
  for (int i = 0; i < v->nslots; i++)
    sb_printf(&s, "tidings_topics{worker=\"%d\"} %lld\n", i + 1,
              v->pid[i] ? (long long)slot_gauge(v, i, G_TOPICS, 0) : 0LL);
  sb_printf(&s,
            "# HELP tidings_worker_up 1 when a worker runs in the slot.\n"
            "# TYPE tidings_worker_up gauge\n");
  for (int i = 0; i < v->nslots; i++)
    sb_printf(&s, "tidings_worker_up{worker=\"%d\"} %d\n", i + 1, v->pid[i] ? 1 : 0);
  for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
    sb_printf(&s, "# HELP %s %s\n# TYPE %s counter\n", counters[k].name, counters[k].help,
              counters[k].name);
    for (int i = 0; i < v->nslots; i++)
      sb_printf(&s, "%s{worker=\"%d\"} %llu\n", counters[k].name, i + 1,
                (unsigned long long)slot_counter(v, i, counters[k].k));
  }
  sb_printf(&s,
            "# HELP tidings_handshakes_rejected_total Connections refused before or at the "
            "handshake, by reason.\n# TYPE tidings_handshakes_rejected_total counter\n");
  for (int r = 0; r < REJECT__COUNT; r++) {
    uint64_t t = 0;
    for (int i = 0; i < v->nslots; i++) t += slot_counter(v, i, M_REJECT_FIRST + r);
    sb_printf(&s, "tidings_handshakes_rejected_total{reason=\"%s\"} %llu\n",
              reject_name((enum reject_reason)r), (unsigned long long)t);
  }
  sb_printf(&s,
            "# HELP tidings_worker_restarts_total Workers restarted after dying.\n"
            "# TYPE tidings_worker_restarts_total counter\ntidings_worker_restarts_total %llu\n",
            (unsigned long long)restarts(v));
  /* the HTTP API: endpoint x status, over every row; a series appears once
   * it counted something (the 200s of every endpoint always) */
  sb_printf(&s,
            "# HELP tidings_api_requests_total HTTP API requests answered, by endpoint and "
            "status.\n# TYPE tidings_api_requests_total counter\n");
  for (int e = 0; e < API_EP__COUNT; e++) {
    for (int st = 0; st < METRIC_API_STATUSES; st++) {
      uint64_t t = 0;
      for (unsigned r = 0; r < v->shm->nrows; r++) t += load64(&v->shm->rows[r].m.api[e][st]);
      if (t == 0 && metric_api_statuses[st] != 200) continue;
      int code = metric_api_statuses[st];
      if (code < 10)
        sb_printf(&s, "tidings_api_requests_total{endpoint=\"%s\",status=\"%dxx\"} %llu\n",
                  metric_api_endpoint_names[e], code, (unsigned long long)t);
      else
        sb_printf(&s, "tidings_api_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                  metric_api_endpoint_names[e], code, (unsigned long long)t);
    }
  }
  /* the histogram: cumulative buckets over every row */
  uint64_t b[METRIC_LAT_BUCKETS] = {0}, sum = 0, count = 0;
  for (unsigned r = 0; r < v->shm->nrows; r++) {
    const struct metrics *m = &v->shm->rows[r].m;
    for (int i = 0; i < METRIC_LAT_BUCKETS; i++) b[i] += load64(&m->lat[i]);
    sum += load64(&m->lat_sum_us);
    count += load64(&m->lat_count);
  }
  sb_printf(&s,
            "# HELP tidings_delivery_latency_seconds Time from a message's arrival from "
            "Redis to its frame's hand-over to the kernel.\n"
            "# TYPE tidings_delivery_latency_seconds histogram\n");
  uint64_t cum = 0;
  for (int i = 0; i < METRIC_LAT_BUCKETS; i++) {
    cum += b[i];
    if (i == METRIC_LAT_BUCKETS - 1)
      sb_printf(&s, "tidings_delivery_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                (unsigned long long)cum);
    else
      sb_printf(&s, "tidings_delivery_latency_seconds_bucket{le=\"%g\"} %llu\n",
                metric_lat_bounds_us[i] / 1e6, (unsigned long long)cum);
  }
  sb_printf(
      &s,
      "tidings_delivery_latency_seconds_sum %.6f\ntidings_delivery_latency_seconds_count %llu\n",
      sum / 1e6, (unsigned long long)count);
  return sb_take(&s, text, len);
}

/* ---- the status page's snapshot ---- */

int admin_metrics_snapshot(const struct admin_view *v, char **json, size_t *len) {
  struct sb s = {0};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts); /* cannot fail for CLOCK_REALTIME */
  sb_printf(&s, "{\"time\":%.3f,\"restarts\":%llu,\"shards\":[", ts.tv_sec + ts.tv_nsec / 1e9,
            (unsigned long long)restarts(v));
  for (int k = 0, first = 1; k < v->nshards; k++)
    if (shard_used(v, k)) {
      sb_printf(&s, "%s\"%s\"", first ? "" : ",", v->shard[k]);
      first = 0;
    }
  sb_printf(&s, "],\"workers\":[");
  for (int i = 0; i < v->nslots; i++) {
    sb_printf(&s,
              "%s{\"worker\":%d,\"pid\":%d,\"up\":%s,\"redis\":%s,\"connections\":%lld,"
              "\"topics\":%lld,\"messages_in\":%llu,\"deliveries\":%llu,\"publishes\":%llu,"
              "\"bytes_in\":%llu,\"bytes_out\":%llu,\"slow_dropped\":%llu,\"rate_limited\":%llu",
              i ? "," : "", i + 1, v->pid[i], v->pid[i] ? "true" : "false",
              v->pid[i] && slot_gauge(v, i, G_REDIS_CONNECTED, 0) ? "true" : "false",
              (long long)slot_gauge(v, i, G_CONNECTIONS, 1),
              v->pid[i] ? (long long)slot_gauge(v, i, G_TOPICS, 0) : 0LL,
              (unsigned long long)slot_counter(v, i, M_MESSAGES_IN),
              (unsigned long long)slot_counter(v, i, M_DELIVERIES),
              (unsigned long long)slot_counter(v, i, M_PUBLISHES),
              (unsigned long long)slot_counter(v, i, M_BYTES_IN),
              (unsigned long long)slot_counter(v, i, M_BYTES_OUT),
              (unsigned long long)slot_counter(v, i, M_SLOW_DROPPED),
              (unsigned long long)slot_counter(v, i, M_RATE_LIMITED));
    sb_printf(&s, ",\"shards_up\":["); /* one 0/1 per shard */
    for (int k = 0, first = 1; k < v->nshards; k++)
      if (shard_used(v, k)) {
        sb_printf(&s, "%s%d", first ? "" : ",", shard_up(v, i, k));
        first = 0;
      }
    sb_printf(&s, "]}");
  }
  sb_printf(&s, "]}");
  return sb_take(&s, json, len);
}

/* ---- health and readiness ---- */

bool admin_metrics_healthy(const struct admin_view *v) {
  for (int i = 0; i < v->nslots; i++)
    if (v->pid[i]) return true;
  return false;
}

bool admin_metrics_ready(const struct admin_view *v, char *why, size_t n) {
  for (int i = 0; i < v->nslots; i++) {
    if (!v->pid[i]) {
      snprintf(why, n, "worker %d is not running\n", i + 1);
      return false;
    }
    if (!slot_gauge(v, i, G_LISTENING, 0)) {
      snprintf(why, n, "worker %d is not listening yet\n", i + 1);
      return false;
    }
    if (!slot_gauge(v, i, G_REDIS_CONNECTED, 0)) {
      snprintf(why, n, "worker %d is not connected to Redis\n", i + 1);
      return false;
    }
  }
  /* a shard down leaves only its topics out: ready, and saying which */
  size_t len = (size_t)snprintf(why, n, "ready\n");
  for (int k = 0; k < v->nshards && len < n; k++)
    for (int i = 0; i < v->nslots; i++)
      if (shard_state(v, i, k) == 1) {
        len += (size_t)snprintf(why + len, n - len, "degraded: Redis shard %d (%s) is down\n", k,
                                v->shard[k]);
        break;
      }
  return true;
}
