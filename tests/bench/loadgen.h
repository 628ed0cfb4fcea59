/* loadgen: WebSocket load generator for tidings.  Shared declarations.
 *
 * One libuv loop, one thread.  loadgen.c holds options, phases and the
 * report; loadgen_ws.c the connections (handshake, framing, publish and
 * delivery accounting); loadgen_util.c the histogram, clocks and /proc. */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#define ZLIB_CONST
#include <zlib.h>

/* ---------------- utilities (loadgen_util.c) ---------------- */

uint64_t now_ns(void); /* CLOCK_MONOTONIC in ns */
uint64_t rng_next(void);
void rng_seed(uint64_t s);
char *u64_to_dec(char *dst, uint64_t v); /* writes digits, returns the end */

/* Log-linear latency histogram in ns: 128 linear sub-buckets per power of
 * two (<1% relative error), from 0 to ~17 s; larger values are clamped to
 * the top bucket (the exact maximum is kept separately). */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MIN_EXP 10 /* 1024 ns */
#define HIST_MAX_EXP 33 /* values < 2^34 ns */
#define HIST_N ((HIST_MAX_EXP - HIST_MIN_EXP + 2) * HIST_SUB)
struct hist {
  uint64_t b[HIST_N];
  uint64_t n, max;
  double sum;
};
void hist_add(struct hist *h, uint64_t v);
double hist_quantile(const struct hist *h, double q); /* ns */

/* /proc readers; all return -1 on failure */
long long proc_rss_bytes(pid_t pid);
long long proc_cpu_ticks(pid_t pid);
/* the listed pids plus (with tree) all their descendants, deduplicated */
size_t proc_expand(const pid_t *roots, size_t nroots, int tree, pid_t *out, size_t max);

/* ---------------- connections (loadgen_ws.c) ---------------- */

enum role { ROLE_SUB, ROLE_PUB };

enum cstate {
  CS_IDLE,        /* not started */
  CS_CONNECTING,  /* TCP connect in progress */
  CS_HANDSHAKE,   /* HTTP upgrade request sent */
  CS_SUBSCRIBING, /* subscriber: subscribe sent, no reply yet */
  CS_READY,       /* usable */
  CS_CLOSING,     /* close frame sent or received */
  CS_DEAD         /* uv_close called */
};

enum fail_reason {
  FAIL_NONE,
  FAIL_CONNECT,
  FAIL_HANDSHAKE,
  FAIL_SUBSCRIBE,
  FAIL_TIMEOUT,
  FAIL_CLOSED,
  FAIL_PROTOCOL,
  FAIL__N
};

struct outbuf {
  char *p;
  size_t len, cap;
};

/* per (subscriber, publisher) duplicate/loss tracking over the per-topic
 * index m = s / topics: hi = highest m seen + 1, bit i of mask = m hi-1-i */
struct track {
  uint64_t hi, mask;
};

/* --e2e: one message of a publisher still on its way to the subscribers of
 * its topic; the publisher's ring holds --window of them (slot s % W) */
struct e2e_slot {
  uint64_t ts;  /* when it was sent (the payload's "ts") */
  uint32_t rem; /* deliveries still missing; 0: complete (or given up) */
  uint32_t topic;
};

struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  uint8_t role;        /* enum role */
  uint8_t state;       /* enum cstate */
  uint8_t fail;        /* enum fail_reason of a setup failure */
  uint8_t ws;          /* upgraded */
  uint8_t writing;     /* a uv_write is in flight */
  uint8_t resolved;    /* counted as ready or failed in the setup phase */
  uint8_t in_hs;       /* counted in g.inflight_hs */
  uint8_t ready;       /* reached CS_READY once */
  uint8_t dropped;     /* lost after being ready, before the closing phase */
  uint8_t counted;     /* subscriber: counted in subs_on_topic at the window start */
  uint8_t e2e_counted; /* subscriber: counted in e2e_need when publishing began */
  uint8_t rx_direct;   /* subscriber read through g.rx_epfd with recvmsg, not libuv */
  uint8_t e2e_kick;    /* publisher: a message completed, refill the window */
  uint8_t close_sent, close_rcvd;
  uint8_t http;                  /* an HTTP API publisher (--http-pub) */
  uint8_t pmd, pmd_nct;          /* permessage-deflate on; server_no_context_takeover */
  uint8_t in_msg, msg_op, msg_z; /* a fragmented message is being collected */
  uint8_t cur;                   /* out[cur] collects, out[cur ^ 1] is being written */
  uint32_t idx;                  /* index within its role */
  uint32_t topic;                /* subscriber: topic index */
  uint32_t seq_at;               /* subscriber: where "seq" was in the last notification */
  char *rbuf;                    /* partial frame (or the handshake response) */
  size_t rlen, rcap, rneed;
  char *msg; /* fragmented message */
  size_t mlen, mcap;
  struct outbuf out[2];
  z_stream *zs;
  char key[28]; /* Sec-WebSocket-Key */
  /* publisher */
  uint64_t s_next; /* next per-publisher sequence number */
  uint64_t acks, errs;
  uint64_t s_first;      /* first sequence number inside the window (UINT64_MAX: none yet) */
  uint64_t sched;        /* rate mode: messages scheduled so far */
  struct e2e_slot *ring; /* --e2e: [window] */
  uint64_t e2e_low;      /* --e2e: oldest sequence number not yet complete */
  /* subscriber */
  struct track *trk; /* [npubs], allocated at the first in-window delivery */
  uint64_t uniq;     /* unique in-window deliveries */
};

void conn_start(struct conn *c);
void conn_flush(struct conn *c);
void conn_send_close(struct conn *c, unsigned code);
void conn_close(struct conn *c);
void conn_fail(struct conn *c, enum fail_reason why, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pub_send_batch(struct conn *c, uint64_t n, uint64_t ts);
void pub_pump(struct conn *c);
void e2e_expire(uint64_t now);
const char *fail_name(enum fail_reason r);
void ws_cleanup(void);
/* Subscribers' arrival times (loadgen_ws.c): rx_start before the first
 * connection (-1: not available, latency then ends at the read), rx_stop in
 * the shutdown. */
int rx_start(void);
void rx_stop(void);

/* ---------------- global state (loadgen.c) ---------------- */

enum phase { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_CLOSING, PH_DONE };

struct opts {
  const char *host, *path, *prefix;
  const char *api_key; /* --http-pub: publishers POST to /api/publish */
  int port;
  uint32_t subs, topics, pubs, window, max_hs;
  double rate, duration, warmup, grace, connect_rate, setup_timeout;
  size_t size;
  int idle, deflate, json, quiet, tree;
  int read_time; /* --read-time: latency ends at read(2), not at the kernel's arrival time */
  int e2e;       /* --e2e: the window closes when every subscriber has the message */
  uint64_t max_failures;
  pid_t *pids;
  size_t npids;
  struct sockaddr_storage *src;
  size_t nsrc;
};

struct global {
  struct opts o;
  uv_loop_t *loop;
  struct sockaddr_storage addr;
  char hostport[300];

  struct conn *conns; /* subscribers [0, subs), publishers [subs, subs + pubs) */
  size_t nconns;
  enum phase phase;

  /* setup */
  size_t next_open, inflight_hs, resolved, open_handles;
  uint64_t t_open0;
  uint64_t nfail[FAIL__N];
  uint64_t established, subscribed, dropped, server_closes;
  unsigned errors_printed;

  /* timing (ns, CLOCK_MONOTONIC) */
  uint64_t t_run0, t_pub0, t_start, t_end;

  /* publishing */
  char *pad;
  size_t padlen;
  char **topic_name;
  size_t *topic_len;
  uint64_t *exp_topic; /* messages sent to each topic in the window, less errors */
  uint64_t *subs_on_topic;
  uint64_t pub_total, pub_window, acked_window, err_window, pub_errors;
  uint64_t rate_skipped;
  char first_error[160];

  /* deliveries */
  uint64_t deliv_total, deliv_window, deliv_outside, dup, unexpected, bad_msgs;
  uint64_t reordered, uniq_total;
  struct hist lat;
  uint64_t rx_ns;       /* when the bytes being parsed arrived (see rx.c below) */
  uint64_t rx_read_ns;  /* when the read that returned them ended */
  struct hist lat_read; /* publish to read(2): includes the loadgen's own queueing */
  uint64_t rx_stamped;  /* reads that carried the kernel's arrival time */
  int rx_epfd;          /* subscribers read here, with arrival times (-1: off) */
  uv_poll_t rx_poll;
  int64_t real_minus_mono; /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns */

  uint64_t pings, inflated;

  /* --e2e: ready subscribers per topic when publishing began (less those
   * lost since); messages sent in the window and completed by every one of
   * them; given up after E2E_GIVE_UP_NS; publish-to-last-delivery latency */
  uint64_t *e2e_need;
  uint64_t e2e_done, e2e_expired, e2e_kicks;
  struct hist e2e_lat;
};

#define E2E_GIVE_UP_NS 10000000000ull

extern struct global g;

void lg_on_ready(struct conn *c); /* setup: became ready */
void lg_on_resolved(void);        /* setup: a connection was resolved */
void lg_open_more(void);
void lg_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
