/* api.c - the HTTP API (see api.h): reading requests off a keep-alive
 * connection, the key, routing, the five endpoints and their answers.
 *
 * The request parser, body framing and the chunked decoder are the pure
 * functions of common/http.c; this file binds them to a connection.  Per
 * connection (struct api_conn): a stash of raw bytes not parsed yet (a
 * split head, or requests read while the pipeline was full), the request
 * whose body is arriving, and the queue of requests in arrival order.  A
 * request enters the queue when its head is parsed and leaves it when its
 * answer is written, which happens only at the head of the queue: that is
 * how the answers keep the order of the requests while the bus answers the
 * publishes in any order. */
#include "api.h"

#include <assert.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/http.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../common/topic.h"
#include "bus.h"
#include "conn.h"
#include "control.h"
#include "proto.h"
#include "pubsub.h"
#include "recovery.h"
#include "worker.h"

#define LINGER_MS 2000 /* a closing answer: time for the client to read it */
#define INLINE_BODY 96 /* answers this small live in the request */
#define STASH_CAP (HTTP_MAX_HEADER_BYTES + 64 * 1024)
#define BODY_FIRST_CAP 4096 /* a split body's buffer starts here and doubles */
#define BODY_KEEP_CAP 65536 /* ...and is kept between requests up to this size */
#define JSON_FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)
#define CT_JSON "application/json"

enum phase { P_HEAD, P_BODY };

/* One broadcast topic. */
struct api_item {
  struct bus_call call; /* first: the bus hands it back */
  struct api_req *r;
  char *topic_json; /* the topic as a JSON string (escaped) */
  int err;          /* a negative enum proto_err, or 0 */
  int has_offset;
  unsigned long long offset;
};

struct api_req {
  struct bus_call call; /* first: the bus hands it back (not for broadcast) */
  struct conn *c;
  struct api_req *next;
  enum metric_api_endpoint ep;
  unsigned done : 1;  /* the answer is ready */
  unsigned close : 1; /* close the connection after the answer */
  unsigned held : 1;  /* holds a reference on c (the bus has it) */
  unsigned ka10 : 1;  /* HTTP/1.0 with keep-alive: the answer says it keeps */
  int status;
  const char *extra; /* static extra header lines, or NULL */
  char *body;        /* the answer's body: inline or malloc'd */
  size_t blen;
  char inline_body[INLINE_BODY];
  /* what the answer needs of the request */
  size_t pending; /* broadcast: topics still waiting for the bus */
  size_t nitems;
  struct api_item *items;
  char *echo; /* disconnect: the answer's body, formed with the request */
  size_t tlen;
  char topic[TOPIC_MAX_LEN + 1];
};

struct api_conn {
  struct api_req *head, *tail;
  unsigned nqueued;
  char *stash; /* raw bytes not parsed yet */
  size_t slen;
  enum phase phase;
  struct api_req *cur; /* P_BODY: the request the body belongs to */
  int discard;         /* P_BODY: the answer is decided; the body is skipped */
  struct http_body framing;
  unsigned long long left; /* P_BODY, Content-Length: bytes still to come */
  struct http_chunked ch;
  char *body; /* the body, when it did not arrive in one read */
  size_t blen, bcap;
  uint64_t started; /* loop ms of the first byte of the request being read */
  unsigned in_request : 1;
  unsigned stop : 1; /* a closing answer is queued: nothing more is parsed */
  unsigned last : 1; /* the request being read is the last (no keep-alive) */
  unsigned busy : 1; /* feed() is running */
};

int api_is_path(const char *p, size_t n) {
  return n >= 4 && memcmp(p, "/api", 4) == 0 && (n == 4 || p[4] == '/');
}

int api_on_public_port(const struct worker *w) { return w->api_key && !w->cfg->api_listen[0]; }

/* ---- answers ---- */

static void pump(struct conn *c);

static void set_body(struct api_req *r, const char *body, size_t len) {
  if (len <= sizeof(r->inline_body)) {
    memcpy(r->inline_body, body, len);
    r->body = r->inline_body;
  } else if ((r->body = malloc(len))) {
    memcpy(r->body, body, len);
  } else {
    r->body = r->inline_body;
    r->status = 500;
    len = (size_t)snprintf(r->inline_body, sizeof(r->inline_body),
                           "{\"error\":\"Internal server error\",\"code\":\"internal_error\"}");
  }
  r->blen = len;
}

/* The answer is ready: body is copied (or taken, when owned, which must
 * then be malloc'd). */
static void finish(struct api_req *r, int status, const char *extra, const char *body, size_t len,
                   char *owned) {
  assert(!r->done);
  r->status = status;
  r->extra = extra;
  if (owned) {
    r->body = owned;
    r->blen = len;
  } else {
    set_body(r, body, len);
  }
  r->done = 1;
  metric_api(r->c->w->m, r->ep, r->status);
}

static void finish_error(struct api_req *r, int status, const char *code, const char *text,
                         const char *extra) {
  char b[256];
  int n = snprintf(b, sizeof(b), "{\"error\":\"%s\",\"code\":\"%s\"}", text, code);
  finish(r, status, extra, b, (size_t)n, NULL);
}

static int status_of(int proto_err) {
  switch (proto_err) {
    case PROTO_EBUS: return 503;
    case PROTO_EINTERNAL: return 500;
    default: return 400;
  }
}

static void finish_proto(struct api_req *r, int err) {
  finish_error(r, status_of(err), proto_err_code(err), proto_err_text(err),
               err == PROTO_EBUS ? "Retry-After: 1\r\n" : NULL);
}

static int proto_of_bus(int bus_err) {
  return bus_err == BUS_ENOMEM ? PROTO_EINTERNAL : PROTO_EBUS;
}

static void free_req(struct api_req *r) {
  if (r->body != r->inline_body) free(r->body);
  free(r->echo);
  for (size_t i = 0; i < r->nitems; i++) free(r->items[i].topic_json);
  free(r->items);
  free(r);
}

/* Writes the answers at the head of the queue that are ready. */
static void write_answer(struct conn *c, struct api_req *r, int close) {
  char out[512], extra[128];
  const char *x = r->extra;
  if (r->ka10 && !close) {
    snprintf(extra, sizeof(extra), "%sConnection: keep-alive\r\n", x ? x : "");
    x = extra;
  }
  int n = http_format_head(out, sizeof(out), r->status, CT_JSON, r->blen, x, close);
  int rc;
  if (n < 0) {
    conn_close(c);
    return;
  }
  if ((size_t)n + r->blen <= sizeof(out)) {
    memcpy(out + n, r->body, r->blen);
    rc = conn_send_copy(c, out, (size_t)n + r->blen);
  } else {
    rc = conn_send_copy(c, out, (size_t)n);
    if (rc == 0) rc = conn_send_copy(c, r->body, r->blen);
  }
  if (rc < 0) conn_close(c);
}

static void feed(struct conn *c, const char *data, size_t len);
static void rearm(struct conn *c);

static void pump(struct conn *c) {
  struct api_conn *a = c->api;
  /* a request whose body is still arriving waits for it: the decision to
   * close after its answer may still change */
  while (c->state == CONN_API && a->head && a->head->done && a->head != a->cur) {
    struct api_req *r = a->head;
    a->head = r->next;
    if (!a->head) a->tail = NULL;
    a->nqueued--;
    int close = r->close || (c->w->shutting_down && !a->head);
    write_answer(c, r, close);
    free_req(r);
    if (close) {
      a->stop = 1;
      conn_drain(c, LINGER_MS);
      return;
    }
  }
  if (c->state != CONN_API) return;
  /* room again in the pipeline: go on with what was read meanwhile */
  if (c->read_held && a->nqueued < API_PIPELINE_MAX && !a->busy) {
    c->read_held = 0;
    if (c->q.bytes < c->w->cfg->max_queued_bytes) conn_read_pause(c, 0);
    if (a->slen) feed(c, NULL, 0);
  }
  rearm(c);
}

/* The deadline: the request being read must be whole within
 * --handshake-timeout of its first byte; an idle connection (nothing
 * being read, no answer owed) is closed as long after it went idle; while
 * answers are owed, or reading waits for them, there is none. */
static void rearm(struct conn *c) {
  struct api_conn *a = c->api;
  if (c->state != CONN_API || a->stop) return;
  uint64_t t = (uint64_t)c->w->cfg->handshake_timeout * 1000;
  if (c->read_held) c->deadline = 0;
  else if (a->in_request) c->deadline = a->started + t;
  else if (a->nqueued == 0) c->deadline = uv_now(c->w->loop) + t;
  else c->deadline = 0;
}

/* ---- the endpoints ---- */

static struct api_req *of_call(struct bus_call *call) { return (struct api_req *)call; }

/* The bus answered a request: the answer is formed unless the client has
 * gone, then the request's reference is dropped (which may free c and,
 * with it, the queue that holds r). */
static void bus_done(struct api_req *r) {
  struct conn *c = r->c;
  assert(r->held);
  r->held = 0;
  if (c->state == CONN_API) pump(c);
  conn_unref(c);
}

static void hold(struct api_req *r) {
  r->held = 1;
  conn_ref(r->c);
}

static void on_published(struct bus_call *call, int err, const struct bus_pos *pos) {
  struct api_req *r = of_call(call);
  if (err != BUS_OK) {
    finish_proto(r, proto_of_bus(err));
  } else {
    char b[48];
    int n = pos ? snprintf(b, sizeof(b), "{\"offset\":%llu}", (unsigned long long)pos->offset)
                : snprintf(b, sizeof(b), "{}");
    finish(r, 200, NULL, b, (size_t)n, NULL);
  }
  bus_done(r);
}

/* The raw bytes of the body's "payload" (forwarded byte for byte), or an
 * encoding when the key was written with escapes.  *enc is set to what
 * the caller frees. */
static int payload_of(json_t *root, const char *body, size_t blen, const char **p, size_t *plen,
                      char **enc) {
  size_t ps, pl;
  *enc = NULL;
  json_t *payload = json_object_get(root, "payload");
  if (!payload) return PROTO_EFORMAT;
  if (proto_find_member(body, blen, "payload", &ps, &pl) == 0) {
    *p = body + ps;
    *plen = pl;
    return 0;
  }
  if (!(*enc = json_dumps(payload, JSON_ENCODE_ANY | JSON_COMPACT))) return PROTO_EINTERNAL;
  *p = *enc;
  *plen = strlen(*enc);
  return 0;
}

static void do_publish(struct api_req *r, const char *body, size_t blen) {
  json_t *root = json_loadb(body, blen, JSON_FLAGS, NULL);
  json_t *t = root ? json_object_get(root, "topic") : NULL;
  const char *p;
  size_t plen;
  char *enc = NULL;
  int rc;
  if (!json_is_object(root) || !json_is_string(t)) rc = PROTO_EFORMAT;
  else if (topic_validate(json_string_value(t), json_string_length(t)) != 0) rc = PROTO_ETOPIC;
  else rc = payload_of(root, body, blen, &p, &plen, &enc);
  if (rc == 0) {
    r->call.published = on_published;
    int brc = pubsub_publish_call(r->c->w, json_string_value(t), json_string_length(t), p, plen,
                                  &r->call);
    if (brc == BUS_OK) hold(r);
    else rc = proto_of_bus(brc);
  }
  if (rc != 0) finish_proto(r, rc);
  free(enc);
  json_decref(root);
}

/* Every topic of the broadcast has its result: {"results":[...]} in
 * request order. */
static void broadcast_answer(struct api_req *r) {
  size_t cap = 16;
  for (size_t i = 0; i < r->nitems; i++) cap += strlen(r->items[i].topic_json) + 160;
  char *out = malloc(cap);
  if (!out) {
    finish_proto(r, PROTO_EINTERNAL);
    return;
  }
  size_t n = (size_t)snprintf(out, cap, "{\"results\":[");
  for (size_t i = 0; i < r->nitems; i++) {
    struct api_item *x = &r->items[i];
    n += (size_t)snprintf(out + n, cap - n, "%s{\"topic\":%s", i ? "," : "", x->topic_json);
    if (x->err)
      n += (size_t)snprintf(out + n, cap - n, ",\"error\":\"%s\",\"code\":\"%s\"}",
                            proto_err_text(x->err), proto_err_code(x->err));
    else if (x->has_offset) n += (size_t)snprintf(out + n, cap - n, ",\"offset\":%llu}", x->offset);
    else n += (size_t)snprintf(out + n, cap - n, "}");
  }
  n += (size_t)snprintf(out + n, cap - n, "]}");
  assert(n < cap);
  finish(r, 200, NULL, NULL, n, out);
}

static void on_item_published(struct bus_call *call, int err, const struct bus_pos *pos) {
  struct api_item *it = (struct api_item *)call;
  struct api_req *r = it->r;
  if (err != BUS_OK) {
    it->err = proto_of_bus(err);
  } else if (pos) {
    it->has_offset = 1;
    it->offset = (unsigned long long)pos->offset;
  }
  assert(r->pending > 0);
  if (--r->pending > 0) return;
  broadcast_answer(r);
  bus_done(r);
}

static void do_broadcast(struct api_req *r, const char *body, size_t blen) {
  json_t *root = json_loadb(body, blen, JSON_FLAGS, NULL);
  json_t *ts = root ? json_object_get(root, "topics") : NULL;
  const char *p;
  size_t plen, n = json_array_size(ts);
  char *enc = NULL;
  int rc = 0;
  if (!json_is_object(root) || !json_is_array(ts) || n == 0 || n > API_BROADCAST_MAX)
    rc = PROTO_EFORMAT;
  for (size_t i = 0; rc == 0 && i < n; i++)
    if (!json_is_string(json_array_get(ts, i))) rc = PROTO_EFORMAT;
  if (rc == 0) rc = payload_of(root, body, blen, &p, &plen, &enc);
  if (rc == 0 && !(r->items = calloc(n, sizeof(*r->items)))) rc = PROTO_EINTERNAL;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    r->items[i].r = r;
    r->items[i].call.published = on_item_published;
    if (!(r->items[i].topic_json = json_dumps(json_array_get(ts, i), JSON_ENCODE_ANY)))
      rc = PROTO_EINTERNAL;
    r->nitems = i + 1;
  }
  if (rc != 0) {
    finish_proto(r, rc); /* nothing was published */
    goto done;
  }
  /* one reference for all the topics; pending counts the bus' answers
   * still to come, plus one for this loop */
  hold(r);
  r->pending = 1;
  for (size_t i = 0; i < n; i++) {
    json_t *t = json_array_get(ts, i);
    struct api_item *it = &r->items[i];
    if (topic_validate(json_string_value(t), json_string_length(t)) != 0) {
      it->err = PROTO_ETOPIC;
      continue;
    }
    int brc = pubsub_publish_call(r->c->w, json_string_value(t), json_string_length(t), p, plen,
                                  &it->call);
    if (brc == BUS_OK) r->pending++;
    else it->err = proto_of_bus(brc);
  }
  if (--r->pending == 0) { /* the bus took none of them */
    broadcast_answer(r);
    r->held = 0;
    conn_unref(r->c); /* not the last reference: the caller's feed() holds one */
  }
done:
  free(enc);
  json_decref(root);
}

static void on_history(struct bus_call *call, int err, const struct bus_history *h) {
  struct api_req *r = of_call(call);
  size_t len = 0;
  char *json = err == BUS_OK ? recovery_history_json(r->topic, r->tlen, h, NULL, &len) : NULL;
  if (err != BUS_OK) finish_proto(r, proto_of_bus(err));
  else if (!json) finish_proto(r, PROTO_EINTERNAL);
  else finish(r, 200, NULL, NULL, len, json);
  bus_done(r);
}

/* A non-negative decimal query parameter, or dflt when absent.  Returns 0
 * or -1. */
static int count_param(struct http_str q, const char *name, unsigned long long dflt,
                       unsigned long long *out) {
  char v[24];
  int n = http_query_param(q, name, v, sizeof(v));
  if (n == HTTP_ENOTFOUND) {
    *out = dflt;
    return 0;
  }
  if (n <= 0 || n > 19) return -1;
  unsigned long long x = 0;
  for (int i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    x = x * 10 + (unsigned long long)(v[i] - '0');
  }
  *out = x;
  return 0;
}

static void do_history(struct api_req *r, struct http_str query) {
  struct worker *w = r->c->w;
  unsigned long long since, limit;
  int n = http_query_param(query, "topic", r->topic, sizeof(r->topic));
  int rc = 0;
  if (n == HTTP_ENOTFOUND || count_param(query, "since", 0, &since) < 0 ||
      count_param(query, "limit", PROTO_HISTORY_LIMIT_MAX, &limit) < 0 || limit == 0 ||
      limit > PROTO_HISTORY_LIMIT_MAX)
    rc = PROTO_EFORMAT;
  else if (n < 0 || topic_validate(r->topic, (size_t)n) != 0) rc = PROTO_ETOPIC;
  else if (!recovery_keeps(w, r->topic, (size_t)n)) rc = PROTO_ENOHISTORY;
  if (rc == 0) {
    r->tlen = (size_t)n;
    r->call.history = on_history;
    int brc = pubsub_history_call(w, r->topic, r->tlen, since, (size_t)limit, &r->call);
    if (brc == BUS_OK) hold(r);
    else rc = proto_of_bus(brc);
  }
  if (rc != 0) finish_proto(r, rc);
}

static void on_topics(struct bus_call *call, int err, const struct topic_count *v, size_t n) {
  struct api_req *r = of_call(call);
  if (err != BUS_OK) {
    finish_proto(r, proto_of_bus(err));
  } else {
    json_t *root = json_object(), *arr = json_array();
    int bad = !root || !arr || json_object_set_new(root, "topics", arr) != 0;
    for (size_t i = 0; !bad && i < n; i++) {
      json_t *o = json_pack("{s:s%,s:I}", "topic", v[i].topic, v[i].tlen, "subscribers_here",
                            (json_int_t)v[i].here);
      bad = !o || json_array_append_new(arr, o) != 0;
    }
    char *out = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!out) finish_proto(r, PROTO_EINTERNAL);
    else finish(r, 200, NULL, NULL, strlen(out), out);
  }
  bus_done(r);
}

static void do_topics(struct api_req *r) {
  r->call.topics = on_topics;
  int brc = control_topics(r->c->w, &r->call);
  if (brc == BUS_OK) hold(r);
  else finish_proto(r, proto_of_bus(brc));
}

static void on_disconnect_sent(struct bus_call *call, int err, const struct bus_pos *pos) {
  (void)pos;
  struct api_req *r = of_call(call);
  if (err != BUS_OK) {
    finish_proto(r, proto_of_bus(err));
  } else {
    /* the body was formed with the request: it echoes it */
    char *b = r->echo;
    r->echo = NULL;
    finish(r, 200, NULL, NULL, strlen(b), b);
  }
  bus_done(r);
}

static void do_disconnect(struct api_req *r, const char *body, size_t blen) {
  json_t *root = json_loadb(body, blen, JSON_FLAGS, NULL);
  json_t *sub = root ? json_object_get(root, "sub") : NULL;
  json_t *t = root ? json_object_get(root, "topic") : NULL;
  int rc = 0;
  if (!json_is_object(root) || !json_is_string(sub) || json_string_length(sub) == 0 ||
      json_string_length(sub) > API_SUB_MAX ||
      strlen(json_string_value(sub)) != json_string_length(sub) || (t && !json_is_string(t)))
    rc = PROTO_EFORMAT;
  else if (t && topic_validate(json_string_value(t), json_string_length(t)) != 0) rc = PROTO_ETOPIC;
  char *echo = NULL;
  if (rc == 0) {
    /* the answer: {"sub":S} or {"sub":S,"topic":T}, kept until the bus answers */
    json_t *o = json_object();
    if (o && json_object_set(o, "sub", sub) == 0 && (!t || json_object_set(o, "topic", t) == 0))
      echo = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!echo) rc = PROTO_EINTERNAL;
  }
  if (rc == 0) {
    r->echo = echo;
    r->call.published = on_disconnect_sent;
    int brc = control_disconnect(r->c->w, json_string_value(sub), json_string_length(sub),
                                 t ? json_string_value(t) : NULL, t ? json_string_length(t) : 0,
                                 &r->call);
    if (brc == BUS_OK) hold(r);
    else rc = proto_of_bus(brc);
  }
  if (rc != 0) finish_proto(r, rc);
  json_decref(root);
}

/* ---- requests ---- */

/* The endpoint of a path under /api/ and the method it takes. */
static enum metric_api_endpoint route(struct http_str path, const char **method) {
  static const struct {
    const char *path, *method;
    enum metric_api_endpoint ep;
  } routes[] = {
      {"/api/publish", "POST", API_EP_PUBLISH},       {"/api/broadcast", "POST", API_EP_BROADCAST},
      {"/api/history", "GET", API_EP_HISTORY},        {"/api/topics", "GET", API_EP_TOPICS},
      {"/api/disconnect", "POST", API_EP_DISCONNECT},
  };
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    if (path.n == strlen(routes[i].path) && memcmp(path.p, routes[i].path, path.n) == 0) {
      *method = routes[i].method;
      return routes[i].ep;
    }
  }
  *method = NULL;
  return API_EP_OTHER;
}

/* "Authorization: apikey <key>" (the scheme in any case), compared in
 * constant time: the comparison runs over the configured key's length
 * whatever was sent, and only whether the lengths are equal shows. */
static int key_ok(const struct worker *w, struct http_str a) {
  if (!a.p || a.n < 7 || strncasecmp(a.p, "apikey", 6) != 0 || (a.p[6] != ' ' && a.p[6] != '\t'))
    return 0;
  size_t i = 7;
  while (i < a.n && (a.p[i] == ' ' || a.p[i] == '\t')) i++;
  const char *tok = a.p + i;
  size_t tl = a.n - i, kl = w->api_key_len;
  int same_len = tl == kl;
  const char *cand = same_len ? tok : w->api_key;
  int diff = CRYPTO_memcmp(cand, w->api_key, kl);
  return same_len & (diff == 0);
}

static void on_body(struct conn *c, const char *body, size_t len);

static struct api_req *new_req(struct conn *c) {
  struct api_conn *a = c->api;
  struct api_req *r = calloc(1, sizeof(*r));
  if (!r) return NULL;
  r->c = c;
  r->ep = API_EP_OTHER;
  if (a->tail) a->tail->next = r;
  else a->head = r;
  a->tail = r;
  a->nqueued++;
  return r;
}

/* The head is parsed: route, check, and either answer at once (the body,
 * if any, is then skipped) or get ready for the body.  Returns 0, or -1
 * when nothing more can be read from the connection. */
static int on_head(struct conn *c, const struct http_request *req, size_t avail_after) {
  struct api_conn *a = c->api;
  struct worker *w = c->w;
  struct api_req *r = new_req(c);
  if (!r) {
    conn_close(c);
    return -1;
  }
  int keep = http_keep_alive(req);
  if (!keep) {
    r->close = 1;
    a->last = 1; /* nothing after this request is read */
  } else if (req->minor_version == 0) {
    r->ka10 = 1;
  }
  a->discard = 0;
  a->blen = 0;
  a->left = 0;
  memset(&a->ch, 0, sizeof(a->ch));
  if (http_body_framing(req, &a->framing) < 0) {
    /* the body cannot be delimited: answer and close */
    r->close = 1;
    a->stop = 1;
    finish_error(r, 400, "bad_request", "Bad request body framing", NULL);
    return -1;
  }
  const char *method;
  r->ep = route(req->path, &method);
  int post = req->method.n == 4 && memcmp(req->method.p, "POST", 4) == 0;
  if (w->shutting_down) {
    r->close = 1;
    a->stop = 1;
    finish_error(r, 503, "shutting_down", "Shutting down", "Retry-After: 1\r\n");
  } else if (!key_ok(w, req->authorization)) {
    finish_error(r, 401, "unauthorized", "Missing or wrong API key",
                 "WWW-Authenticate: apikey\r\n");
  } else if (!method) {
    finish_error(r, 404, "not_found", "Not found", NULL);
  } else if (req->method.n != strlen(method) || memcmp(req->method.p, method, req->method.n)) {
    finish_error(r, 405, "method_not_allowed", "Method not allowed",
                 method[0] == 'P' ? "Allow: POST\r\n" : "Allow: GET\r\n");
  } else if (post && req->content_type.p && !http_media_type_is(req->content_type, CT_JSON)) {
    finish_error(r, 415, "unsupported_media_type", "Content-Type must be application/json", NULL);
  } else if (post && a->framing.kind == HTTP_BODY_NONE) {
    finish_error(r, 411, "length_required", "A body with Content-Length or chunked is required",
                 NULL);
  } else if (post && a->framing.kind == HTTP_BODY_LENGTH &&
             a->framing.length > w->cfg->max_message_size) {
    finish_error(r, 413, "payload_too_large", "Request body over the size limit", NULL);
  } else if (!post) {
    /* GET: answered from the head (a body, if any, is skipped) */
    if (r->ep == API_EP_HISTORY) do_history(r, req->query);
    else do_topics(r);
    a->discard = 1;
  }
  if (r->done && post) a->discard = 1;
  if (a->framing.kind == HTTP_BODY_NONE) return 0;
  if (a->discard && http_expects_continue(req) && avail_after == 0) {
    /* refused before the body was sent: the client may never send it */
    r->close = 1;
    a->stop = 1;
    return -1;
  }
  /* a body follows */
  a->cur = r;
  a->phase = P_BODY;
  a->left = a->framing.length;
  if (a->framing.kind == HTTP_BODY_LENGTH && a->left == 0) {
    on_body(c, "", 0);
    return 0;
  }
  if (!a->discard && http_expects_continue(req) && avail_after == 0 && a->head == r) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (conn_send_copy(c, cont, sizeof(cont) - 1) < 0) {
      conn_close(c);
      return -1;
    }
  }
  return 0;
}

/* The body of a->cur is complete (body[0..len)): act on it. */
static void on_body(struct conn *c, const char *body, size_t len) {
  struct api_conn *a = c->api;
  struct api_req *r = a->cur;
  a->cur = NULL;
  a->phase = P_HEAD;
  a->in_request = 0;
  if (!a->discard && r && !r->done) {
    switch (r->ep) {
      case API_EP_PUBLISH: do_publish(r, body, len); break;
      case API_EP_BROADCAST: do_broadcast(r, body, len); break;
      case API_EP_DISCONNECT: do_disconnect(r, body, len); break;
      default: finish_proto(r, PROTO_EINTERNAL); break;
    }
  }
  /* a large body buffer is not kept for the next request */
  if (a->bcap > BODY_KEEP_CAP) {
    free(a->body);
    a->body = NULL;
    a->bcap = 0;
  }
}

/* Makes room for n more body bytes (up to --max-message-size). */
static int body_room(struct api_conn *a, size_t want, size_t max) {
  if (want <= a->bcap) return 0;
  if (want > max) return -1;
  size_t cap = a->bcap ? a->bcap : BODY_FIRST_CAP;
  while (cap < want) cap *= 2;
  if (cap > max) cap = max;
  char *b = realloc(a->body, cap);
  if (!b) return -1;
  a->body = b;
  a->bcap = cap;
  return 0;
}

/* The body of a->cur cannot be read on: it is answered with status (unless
 * its answer is decided already), and the connection closes after it. */
static void give_up(struct api_conn *a, int status, const char *text) {
  struct api_req *r = a->cur;
  a->cur = NULL;
  a->phase = P_HEAD;
  a->stop = 1;
  if (!r) return;
  r->close = 1;
  if (!r->done && !r->held)
    finish_error(r, status, status == 413 ? "payload_too_large" : "bad_request", text, NULL);
}

/* Reads the body of a->cur from p[0..n); returns the bytes consumed, or
 * -1 when the connection is done for. */
static long body_bytes(struct conn *c, const char *p, size_t n) {
  struct api_conn *a = c->api;
  size_t max = c->w->cfg->max_message_size;
  if (a->framing.kind == HTTP_BODY_LENGTH) {
    size_t take = (unsigned long long)n < a->left ? n : (size_t)a->left;
    if (!a->discard) {
      if (a->blen == 0 && take == a->left) { /* all here: no copy */
        a->left = 0;
        on_body(c, p, take);
        return (long)take;
      }
      if (body_room(a, a->blen + take, max) < 0) {
        conn_close(c);
        return -1;
      }
      memcpy(a->body + a->blen, p, take);
      a->blen += take;
    }
    a->left -= take;
    if (a->left == 0) on_body(c, a->body, a->blen);
    return (long)take;
  }
  /* chunked */
  size_t at = 0;
  for (;;) {
    long rc;
    if (a->discard) {
      rc = http_chunked_decode(&a->ch, p + at, n - at, NULL, &a->blen, max);
    } else {
      rc = http_chunked_decode(&a->ch, p + at, n - at, a->body, &a->blen, a->bcap);
    }
    if (rc < 0) {
      give_up(a, 400, "Malformed chunked body");
      return -1;
    }
    at += (size_t)rc;
    if (a->ch.done) {
      on_body(c, a->body, a->blen);
      return (long)at;
    }
    if (at == n) return (long)at;
    /* the destination is full */
    if (a->discard || body_room(a, a->bcap + 1, max) < 0) {
      give_up(a, 413, "Request body over the size limit");
      return -1;
    }
  }
}

/* Parses and acts on p[0..n); returns the bytes consumed (the rest is
 * stashed by the caller), or -1 when the connection is done for. */
static long parse(struct conn *c, const char *p, size_t n) {
  struct api_conn *a = c->api;
  size_t at = 0;
  while (at < n && !a->stop && c->state == CONN_API) {
    if (a->phase == P_BODY) {
      long k = body_bytes(c, p + at, n - at);
      if (k < 0) return -1;
      at += (size_t)k;
      continue;
    }
    if (a->last) {
      at = n; /* after the last request: ignored */
      break;
    }
    if (a->nqueued >= API_PIPELINE_MAX) {
      /* full: wait until answers leave (pump resumes) */
      c->read_held = 1;
      conn_read_pause(c, 1);
      break;
    }
    if (!a->in_request) {
      a->in_request = 1;
      a->started = uv_now(c->w->loop);
    }
    struct http_request req;
    size_t avail = n - at;
    int h = http_parse_request(p + at,
                               avail < HTTP_MAX_HEADER_BYTES ? avail : HTTP_MAX_HEADER_BYTES, &req);
    if (h == HTTP_INCOMPLETE && avail < HTTP_MAX_HEADER_BYTES) break;
    if (h < 0) {
      struct api_req *r = new_req(c);
      if (!r) {
        conn_close(c);
        return -1;
      }
      r->close = 1;
      a->stop = 1;
      if (h == HTTP_INCOMPLETE)
        finish_error(r, 431, "header_too_large", "Request header too large", NULL);
      else finish_error(r, 400, "bad_request", "Malformed HTTP request", NULL);
      return -1;
    }
    at += (size_t)h;
    if (on_head(c, &req, n - at) < 0) return -1;
    if (a->phase == P_HEAD) a->in_request = 0;
  }
  return (long)at;
}

/* Handles data after whatever is stashed; stashes what is left. */
static void feed(struct conn *c, const char *data, size_t len) {
  struct api_conn *a = c->api;
  if (a->stop) return;
  a->busy = 1;
  conn_ref(c); /* pump may close c; its memory stays until the end of this */
  const char *p = data;
  size_t n = len;
  if (a->slen) {
    if (a->slen + len > STASH_CAP) {
      conn_close(c); /* cannot happen: reading stops before */
      goto out;
    }
    if (len) memcpy(a->stash + a->slen, data, len);
    p = a->stash;
    n = a->slen + len;
  }
  long used = parse(c, p, n);
  if (used < 0 || c->state != CONN_API) {
    a->slen = 0;
  } else if ((size_t)used < n) {
    size_t rest = n - (size_t)used;
    if (!a->stash && !(a->stash = malloc(STASH_CAP))) {
      conn_close(c);
      goto out;
    }
    memmove(a->stash, p + used, rest);
    a->slen = rest;
  } else {
    a->slen = 0;
  }
  a->busy = 0;
  if (c->state == CONN_API) pump(c);
out:
  a->busy = 0;
  conn_unref(c);
}

/* ---- the connection ---- */

void api_start(struct conn *c, const char *data, size_t len) {
  if (!(c->api = calloc(1, sizeof(*c->api)))) {
    conn_close(c);
    return;
  }
  c->state = CONN_API;
  rearm(c);
  if (len) api_input(c, data, len);
}

void api_input(struct conn *c, const char *data, size_t len) {
  if (c->state != CONN_API) return;
  feed(c, data, len);
}

void api_shutdown(struct conn *c) {
  struct api_conn *a = c->api;
  if (!a || c->state != CONN_API) return;
  if (a->nqueued == 0) {
    conn_close(c);
    return;
  }
  /* the answers owed go out; the last one closes */
  a->stop = 1;
  a->tail->close = 1;
  if (a->phase == P_BODY) {
    /* its body will not be read any more */
    struct api_req *r = a->cur;
    a->cur = NULL;
    if (r && !r->done && !r->held)
      finish_error(r, 503, "shutting_down", "Shutting down", "Retry-After: 1\r\n");
  }
  pump(c);
}

void api_timeout(struct conn *c) {
  struct api_conn *a = c->api;
  if (a && a->in_request) {
    metric_api(c->w->m, API_EP_OTHER, 408);
    log_debug("api_timeout", "conn %llu %s: API request not complete in time, closing",
              (unsigned long long)c->id, c->peer);
  }
  conn_close(c);
}

void api_conn_free(struct conn *c) {
  struct api_conn *a = c->api;
  if (!a) return;
  for (struct api_req *r = a->head, *nx; r; r = nx) {
    nx = r->next;
    assert(!r->held);
    free_req(r);
  }
  free(a->stash);
  free(a->body);
  free(a);
  c->api = NULL;
}
