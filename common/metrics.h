/* metrics.h - the counters, gauges and latency histogram every worker keeps
 * in its row of shared memory (shm.h), summed by whoever reads them.
 *
 * One writer per row (its worker), so an update is a relaxed load and
 * store, not a locked read-modify-write, and never a system call.  Totals
 * survive a worker's restart: the next worker in the slot keeps adding to
 * them; gauges (live state) are reset when a worker starts.
 */
#ifndef TIDINGS_METRICS_H
#define TIDINGS_METRICS_H

#include <stdint.h>

#include "reject.h"

enum metric_counter {
  M_CONNECTIONS_TOTAL,  /* WebSocket sessions opened */
  M_MESSAGES_IN,        /* WebSocket data messages received */
  M_BYTES_IN,           /* bytes read from clients (wire) */
  M_BYTES_OUT,          /* bytes handed to the kernel for clients (wire) */
  M_BYTES_OUT_RAW,      /* notification bytes before compression */
  M_PUBLISHES,          /* publishes accepted by Redis */
  M_PUBLISH_ERRORS,     /* publishes answered with an error */
  M_BUS_MESSAGES,       /* messages received from Redis */
  M_DELIVERIES,         /* notifications queued to subscribers */
  M_SLOW_DROPPED,       /* notifications skipped for slow subscribers */
  M_SLOW_DISCONNECTS,   /* subscribers closed for slowness */
  M_RATE_LIMITED,       /* messages refused by the rate limit */
  M_REDIS_RECONNECTS,   /* Redis connections re-established */
  M_HISTORY_DUPLICATES, /* messages with an offset already delivered, dropped */
  M_HISTORY_CATCHUPS,   /* history reads to fill a gap in a topic's offsets */
  M_RESUMES,            /* subscribes with "since" answered recovered:true */
  M_RESUMES_FAILED,     /* ... answered recovered:false */
  M_REJECT_FIRST,       /* + enum reject_reason: handshakes refused */
  M__COUNT = M_REJECT_FIRST + REJECT__COUNT
};

enum metric_gauge {
  G_CONNECTIONS,     /* open WebSocket sessions */
  G_REDIS_CONNECTED, /* 1 when both Redis connections are up */
  G_TOPICS,          /* topics with local subscribers */
  G_LISTENING,       /* 1 once the worker accepts connections */
  G__COUNT
};

/* The HTTP API's requests (tidings_api_requests_total{endpoint,status}):
 * a fixed table of endpoint x status, so the shared-memory row keeps its
 * size.  A status outside the list is counted under its class (the last
 * columns: "2xx" ... "5xx"). */
enum metric_api_endpoint {
  API_EP_PUBLISH,
  API_EP_BROADCAST,
  API_EP_HISTORY,
  API_EP_TOPICS,
  API_EP_DISCONNECT,
  API_EP_OTHER, /* unknown paths, and requests refused before routing */
  API_EP__COUNT
};
static const char *const metric_api_endpoint_names[API_EP__COUNT] = {
    "publish", "broadcast", "history", "topics", "disconnect", "other"};
#define METRIC_API_STATUSES 16
static const short metric_api_statuses[METRIC_API_STATUSES] = {
    200, 400, 401, 404, 405, 408, 411, 413, 415, 431, 500, 503, 2, 3, 4, 5};

static inline int metric_api_status_index(int status) {
  for (int i = 0; i < METRIC_API_STATUSES - 4; i++)
    if (metric_api_statuses[i] == status) return i;
  int cls = status / 100;
  return cls >= 2 && cls <= 5 ? METRIC_API_STATUSES - 4 + (cls - 2) : METRIC_API_STATUSES - 1;
}

/* Upper bounds in microseconds of the delivery latency buckets: from a
 * message's arrival from Redis to its frame's hand-over to the kernel. */
#define METRIC_LAT_BUCKETS 14
static const uint32_t metric_lat_bounds_us[METRIC_LAT_BUCKETS] = {
    50,    100,   250,   500,    1000,   2500,    5000,
    10000, 25000, 50000, 100000, 250000, 1000000, UINT32_MAX /* +Inf */};

/* --redis servers a worker can have (common/shard.h's SHARDS_MAX) */
#define METRIC_SHARDS 32

struct metrics {
  uint64_t c[M__COUNT];
  int64_t g[G__COUNT];
  uint8_t shard_up[METRIC_SHARDS];  /* 1 while the worker's connections to shard i are ready */
  uint64_t lat[METRIC_LAT_BUCKETS]; /* not cumulative; the reader sums */
  uint64_t lat_sum_us;
  uint64_t lat_count;
  uint64_t api[API_EP__COUNT][METRIC_API_STATUSES];
};

static inline void metric_add(struct metrics *m, enum metric_counter k, uint64_t n) {
  __atomic_store_n(&m->c[k], __atomic_load_n(&m->c[k], __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}
static inline void metric_gauge(struct metrics *m, enum metric_gauge k, int64_t v) {
  __atomic_store_n(&m->g[k], v, __ATOMIC_RELAXED);
}
/* up: 1 ready, 0 down, -1 not in use (a retired Redis Cluster master). */
static inline void metric_shard(struct metrics *m, unsigned shard, int up) {
  if (shard < METRIC_SHARDS)
    __atomic_store_n(&m->shard_up[shard], (uint8_t)(up < 0 ? 0 : up ? 2 : 1), __ATOMIC_RELAXED);
}
static inline void metric_latency(struct metrics *m, uint64_t us, uint64_t n) {
  int b = 0;
  while (us > metric_lat_bounds_us[b]) b++;
  __atomic_store_n(&m->lat[b], m->lat[b] + n, __ATOMIC_RELAXED);
  __atomic_store_n(&m->lat_sum_us, m->lat_sum_us + us * n, __ATOMIC_RELAXED);
  __atomic_store_n(&m->lat_count, m->lat_count + n, __ATOMIC_RELAXED);
}

static inline void metric_api(struct metrics *m, enum metric_api_endpoint ep, int status) {
  uint64_t *p = &m->api[ep][metric_api_status_index(status)];
  __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

#endif
