/* fuzz_proto - worker/proto.c: the JSON protocol, with fake connection ops.
 *
 * Input: byte 0 decides what the fake ops answer, the rest is one text
 * message.
 *   bits 0-1  subscribe:   OK, ETOOMANY, EFORBIDDEN, EINTERNAL
 *   bits 2-3  unsubscribe: OK, ENOTSUB, ERATE, EINTERNAL
 *   bits 4-6  publish:     OK, PENDING, PENDING, EBUS, EFORBIDDEN, ERATE,
 *                          ETOOMANY, EINTERNAL
 *   bit  7    send fails (returns -1)
 *
 * Invariants checked besides the sanitizers (and LeakSanitizer):
 *  - every reply is one valid JSON object (jansson, JSON_ALLOW_NUL) with
 *    either "status"/"type" (success) or "error" and the "code" of the
 *    result; exactly one reply per request, none when PENDING;
 *  - the reply's "id" equals the request's "id";
 *  - subscribe/unsubscribe/publish only ever see valid topics, and publish
 *    sees the request's own "payload" (equal as JSON);
 *  - an echoed topic is a UTF-8 prefix of the request's topic;
 *  - the later replies of a PENDING publish (proto_reply_status/_error) and
 *    proto_reply_error() with arbitrary topic bytes are valid JSON;
 *  - proto_find_member() on valid JSON finds the value jansson finds, and
 *    never misses a key when the text has no escapes at all; on any input it
 *    stays inside the buffer. */
#include <ctype.h>
#include <jansson.h>
#include <string.h>

#include "../../common/topic.h"
#include "../../common/utf8.h"
#include "../../worker/proto.h"
#include "fuzz_common.h"

#define MAX_REPLIES 4

struct fake {
  uint8_t ctl;
  int nreplies;
  int last_sub, last_unsub, last_pub; /* what the op returned, 2 = not called */
  json_t *req;                        /* the request as jansson reads it, or NULL */
  const char *req_topic;
  size_t req_tlen;
  char *pending_id; /* copied id_json of a PENDING publish */
  char pending_topic[256];
  size_t pending_tlen;
  int expect_code; /* the result whose reply is being checked */
  char *reply[MAX_REPLIES];
  size_t reply_len[MAX_REPLIES];
};

static void check_reply(struct fake *f, const char *msg, size_t len) {
  json_error_t jerr;
  json_t *r = json_loadb(msg, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
  if (!r) fprintf(stderr, "reply is not JSON (%s): %.*s\n", jerr.text, (int)len, msg);
  FUZZ_CHECK(r != NULL);
  FUZZ_CHECK(json_is_object(r));
  json_t *err = json_object_get(r, "error");
  if (f->expect_code == PROTO_EINTERNAL && (f->ctl & 0x80)) {
    /* a ping whose pong could not be sent: the result is EINTERNAL */
    FUZZ_CHECK(json_is_string(err) || json_is_string(json_object_get(r, "type")));
  } else if (f->expect_code < 0) {
    FUZZ_CHECK(json_is_string(err));
    FUZZ_CHECK(json_is_string(json_object_get(r, "code")));
    FUZZ_CHECK(
        strcmp(json_string_value(json_object_get(r, "code")), proto_err_code(f->expect_code)) == 0);
  } else {
    FUZZ_CHECK(err == NULL);
    FUZZ_CHECK(json_is_string(json_object_get(r, "status")) ||
               json_is_string(json_object_get(r, "type")));
  }
  json_t *t = json_object_get(r, "topic");
  if (t && f->req_topic) {
    FUZZ_CHECK(json_is_string(t));
    size_t n = json_string_length(t);
    FUZZ_CHECK(n <= f->req_tlen && n <= 200);
    FUZZ_CHECK(memcmp(json_string_value(t), f->req_topic, n) == 0);
  }
  if (f->req) {
    json_t *want = json_object_get(f->req, "id");
    json_t *got = json_object_get(r, "id");
    FUZZ_CHECK((want == NULL) == (got == NULL));
    if (want) FUZZ_CHECK(json_equal(want, got));
  }
  json_decref(r);
}

/* Records the reply; it is checked once the result is known. */
static int op_send(void *ctx, const char *msg, size_t len) {
  struct fake *f = ctx;
  if (f->nreplies < MAX_REPLIES) {
    f->reply[f->nreplies] = fuzz_dup(msg, len);
    f->reply_len[f->nreplies] = len;
  }
  f->nreplies++;
  return (f->ctl & 0x80) ? -1 : 0;
}

static void check_replies(struct fake *f, int code, int want) {
  if (f->nreplies != want)
    fprintf(stderr, "%d replies, want %d (result %d)\n", f->nreplies, want, code);
  FUZZ_CHECK(f->nreplies == want);
  f->expect_code = code;
  for (int i = 0; i < f->nreplies && i < MAX_REPLIES; i++) {
    check_reply(f, f->reply[i], f->reply_len[i]);
    free(f->reply[i]);
    f->reply[i] = NULL;
  }
  f->nreplies = 0;
}

static void check_topic(const char *topic, size_t tlen) {
  FUZZ_CHECK(topic_validate(topic, tlen) == 0);
  FUZZ_CHECK(tlen >= 1 && tlen <= 128);
  FUZZ_CHECK(topic[0] != '.');
}

static int op_subscribe(void *ctx, const char *topic, size_t tlen, const struct proto_since *since,
                        const char *id_json) {
  static const int res[4] = {PROTO_OK, PROTO_ETOOMANY, PROTO_EFORBIDDEN, PROTO_EINTERNAL};
  struct fake *f = ctx;
  (void)id_json;
  check_topic(topic, tlen);
  if (since) {
    size_t n = strlen(since->epoch);
    FUZZ_CHECK(n <= PROTO_EPOCH_MAX);
    for (size_t i = 0; i < n; i++)
      FUZZ_CHECK(since->epoch[i] == '-' || isalnum((unsigned char)since->epoch[i]));
  }
  return f->last_sub = res[f->ctl & 3];
}

static int op_history(void *ctx, const char *topic, size_t tlen, unsigned long long since,
                      unsigned limit, const char *id_json) {
  (void)ctx;
  (void)since;
  (void)id_json;
  check_topic(topic, tlen);
  FUZZ_CHECK(limit >= 1 && limit <= PROTO_HISTORY_LIMIT_MAX);
  return PROTO_ENOHISTORY;
}

static int op_unsubscribe(void *ctx, const char *topic, size_t tlen) {
  static const int res[4] = {PROTO_OK, PROTO_ENOTSUB, PROTO_ERATE, PROTO_EINTERNAL};
  struct fake *f = ctx;
  check_topic(topic, tlen);
  return f->last_unsub = res[(f->ctl >> 2) & 3];
}

static int op_publish(void *ctx, const char *topic, size_t tlen, const char *payload, size_t plen,
                      const char *id_json) {
  static const int res[8] = {PROTO_OK,         PROTO_PENDING, PROTO_PENDING,  PROTO_EBUS,
                             PROTO_EFORBIDDEN, PROTO_ERATE,   PROTO_ETOOMANY, PROTO_EINTERNAL};
  struct fake *f = ctx;
  check_topic(topic, tlen);
  /* the payload is the request's own value */
  FUZZ_CHECK(f->req != NULL);
  json_error_t jerr;
  json_t *p = json_loadb(payload, plen, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  if (!p) fprintf(stderr, "payload is not JSON: %.*s\n", (int)plen, payload);
  FUZZ_CHECK(p != NULL);
  FUZZ_CHECK(json_equal(p, json_object_get(f->req, "payload")));
  json_decref(p);
  int rc = f->last_pub = res[(f->ctl >> 4) & 7];
  if (rc == PROTO_PENDING) {
    /* a later reply needs its own copies */
    f->pending_id = id_json ? strdup(id_json) : NULL;
    memcpy(f->pending_topic, topic, tlen);
    f->pending_tlen = tlen;
  }
  return rc;
}

static const struct proto_ops fake_ops = {op_subscribe, op_unsubscribe, op_publish, op_send,
                                          op_history};

static void check_find_member(const char *s, size_t len, json_t *root, int no_escapes) {
  static const char *const keys[] = {"payload", "id", "type", "topic", ""};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
    size_t st = 0, vl = 0;
    int rc = proto_find_member(s, len, keys[i], &st, &vl);
    if (rc == 0) FUZZ_CHECK(st <= len && vl <= len - st);
    if (!root) continue;
    json_t *want = json_object_get(root, keys[i]);
    if (rc == 0) {
      FUZZ_CHECK(want != NULL);
      json_error_t jerr;
      json_t *got = json_loadb(s + st, vl, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
      FUZZ_CHECK(got != NULL);
      FUZZ_CHECK(json_equal(got, want));
      json_decref(got);
    } else if (want && no_escapes) {
      FUZZ_CHECK(!"proto_find_member missed a plainly written key");
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  struct fake f;
  memset(&f, 0, sizeof(f));
  f.ctl = data[0];
  f.last_sub = f.last_unsub = f.last_pub = 2;
  size_t len = size - 1;
  char *msg = fuzz_dup(data + 1, len);

  json_error_t jerr;
  json_t *root = json_loadb(msg, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  if (root && !json_is_object(root)) {
    json_decref(root);
    root = NULL;
  }
  f.req = root;
  json_t *topic = root ? json_object_get(root, "topic") : NULL;
  if (json_is_string(topic)) {
    f.req_topic = json_string_value(topic);
    f.req_tlen = json_string_length(topic);
  }

  int rc = proto_handle(&fake_ops, &f, msg, len);
  FUZZ_CHECK(rc >= PROTO_ENOHISTORY && rc <= PROTO_PENDING);
  if (rc == PROTO_PENDING) {
    FUZZ_CHECK(f.last_pub == PROTO_PENDING);
    check_replies(&f, rc, 0);
  } else {
    check_replies(&f, rc, 1);
  }
  if (!root) FUZZ_CHECK(rc == PROTO_EFORMAT);
  if (f.last_sub != 2 && f.last_sub < 0) FUZZ_CHECK(rc == f.last_sub);
  if (f.last_unsub != 2 && f.last_unsub < 0) FUZZ_CHECK(rc == f.last_unsub);
  if (f.last_pub != 2) FUZZ_CHECK(rc == f.last_pub);

  if (rc == PROTO_PENDING) {
    /* the bus answers later, through the copies the publish kept */
    proto_reply_status(&fake_ops, &f, "published", f.pending_topic, f.pending_tlen, f.pending_id);
    check_replies(&f, PROTO_OK, 1);
    int err = (f.ctl & 1) ? PROTO_EBUS : PROTO_EINTERNAL;
    proto_reply_error(&fake_ops, &f, err, f.pending_topic, f.pending_tlen, f.pending_id);
    check_replies(&f, err, 1);
    free(f.pending_id);
  }

  /* an error reply echoing arbitrary bytes as the topic */
  f.req = NULL;
  f.req_topic = msg;
  f.req_tlen = len;
  int err = -1 - (int)(f.ctl % 10);
  proto_reply_error(&fake_ops, &f, err, msg, len, NULL);
  check_replies(&f, err, 1);

  check_find_member(msg, len, root, root && memchr(msg, '\\', len) == NULL);
  json_decref(root);
  free(msg);
  return 0;
}
