/* Unit tests for worker/proto.c: the JSON pub/sub protocol, driven through
 * a fake struct proto_ops that records every call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../worker/proto.h"

#define MAX_SENT 8

struct fake {
  /* what the operations return */
  int sub_rc, unsub_rc, pub_rc, send_rc, hist_rc;
  /* what they were called with (the last call) */
  int nsub, nunsub, npub, nhist;
  int has_since;
  struct proto_since since;
  unsigned long long hist_since;
  unsigned hist_limit;
  char topic[512];
  size_t tlen;
  char *payload; /* heap copy */
  size_t plen;
  char id[4096];
  int has_id;
  /* every message sent */
  int nsent;
  char *sent[MAX_SENT];
  size_t sentlen[MAX_SENT];
};

static void record_topic(struct fake *f, const char *topic, size_t tlen) {
  assert_true(tlen < sizeof(f->topic));
  memcpy(f->topic, topic, tlen);
  f->topic[tlen] = '\0';
  f->tlen = tlen;
}

static void record_id(struct fake *f, const char *id_json) {
  f->has_id = id_json != NULL;
  if (id_json) {
    assert_true(strlen(id_json) < sizeof(f->id));
    strcpy(f->id, id_json);
  }
}

static int fake_subscribe(void *ctx, const char *topic, size_t tlen,
                          const struct proto_since *since, const char *id_json) {
  struct fake *f = ctx;
  f->nsub++;
  record_topic(f, topic, tlen);
  f->has_since = since != NULL;
  if (since) f->since = *since;
  record_id(f, id_json);
  return f->sub_rc;
}

static int fake_history(void *ctx, const char *topic, size_t tlen, unsigned long long since,
                        unsigned limit, const char *id_json) {
  struct fake *f = ctx;
  f->nhist++;
  record_topic(f, topic, tlen);
  f->hist_since = since;
  f->hist_limit = limit;
  record_id(f, id_json);
  return f->hist_rc;
}

static int fake_unsubscribe(void *ctx, const char *topic, size_t tlen) {
  struct fake *f = ctx;
  f->nunsub++;
  record_topic(f, topic, tlen);
  return f->unsub_rc;
}

static int fake_publish(void *ctx, const char *topic, size_t tlen, const char *payload, size_t plen,
                        const char *id_json) {
  struct fake *f = ctx;
  f->npub++;
  record_topic(f, topic, tlen);
  free(f->payload);
  f->payload = malloc(plen ? plen : 1);
  assert_non_null(f->payload);
  memcpy(f->payload, payload, plen);
  f->plen = plen;
  record_id(f, id_json);
  return f->pub_rc;
}

static int fake_send(void *ctx, const char *msg, size_t len) {
  struct fake *f = ctx;
  assert_true(f->nsent < MAX_SENT);
  char *copy = malloc(len + 1);
  assert_non_null(copy);
  memcpy(copy, msg, len);
  copy[len] = '\0';
  f->sent[f->nsent] = copy;
  f->sentlen[f->nsent] = len;
  f->nsent++;
  return f->send_rc;
}

static const struct proto_ops OPS = {
    .subscribe = fake_subscribe,
    .unsubscribe = fake_unsubscribe,
    .publish = fake_publish,
    .send = fake_send,
    .history = fake_history,
};

static int setup(void **state) {
  struct fake *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fake *f = *state;
  for (int i = 0; i < f->nsent; i++) free(f->sent[i]);
  free(f->payload);
  free(f);
  return 0;
}

/* Handles a copy of msg[0..len) held in a heap block of exactly len bytes
 * (not NUL-terminated), so that AddressSanitizer catches over-reads. */
static int handle_n(struct fake *f, const char *msg, size_t len) {
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  if (len) memcpy(b, msg, len);
  int rc = proto_handle(&OPS, f, b, len);
  free(b);
  return rc;
}

static int handle(struct fake *f, const char *msg) { return handle_n(f, msg, strlen(msg)); }

/* Asserts that exactly one reply was sent since the last call, and that it
 * is want. */
static void expect_reply(struct fake *f, const char *want) {
  if (f->nsent != 1) {
    print_error("%d replies sent, want 1\n", f->nsent);
    for (int i = 0; i < f->nsent; i++) print_error("  %s\n", f->sent[i]);
    fail();
  }
  if (f->sentlen[0] != strlen(want) || memcmp(f->sent[0], want, f->sentlen[0]) != 0) {
    print_error("reply %s\n want %s\n", f->sent[0], want);
    fail();
  }
  free(f->sent[0]);
  f->nsent = 0;
}

static void expect_no_reply(struct fake *f) { assert_int_equal(f->nsent, 0); }

static void expect_payload(struct fake *f, const char *want) {
  size_t n = strlen(want);
  if (f->plen != n || memcmp(f->payload, want, n) != 0) {
    print_error("payload %.*s\n   want %s\n", (int)f->plen, f->payload, want);
    fail();
  }
}

#define F struct fake *f = *state

/* ---- successful requests ---- */

static void test_subscribe(void **state) {
  F;
  assert_int_equal(handle(f, "{\"type\":\"subscribe\",\"topic\":\"news\"}"), PROTO_OK);
  assert_int_equal(f->nsub, 1);
  assert_string_equal(f->topic, "news");
  assert_int_equal(f->tlen, 4);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"news\"}");
  assert_int_equal(f->nunsub + f->npub, 0);
}

static void test_unsubscribe(void **state) {
  F;
  assert_int_equal(handle(f, "{\"topic\":\"a.b:c/d@e\",\"type\":\"unsubscribe\"}"), PROTO_OK);
  assert_int_equal(f->nunsub, 1);
  assert_string_equal(f->topic, "a.b:c/d@e");
  expect_reply(f, "{\"status\":\"unsubscribed\",\"topic\":\"a.b:c/d@e\"}");
  assert_int_equal(f->nsub + f->npub, 0);
}

static void test_publish(void **state) {
  F;
  assert_int_equal(handle(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":{\"x\":1}}"),
                   PROTO_OK);
  assert_int_equal(f->npub, 1);
  assert_string_equal(f->topic, "t");
  expect_payload(f, "{\"x\":1}");
  assert_int_equal(f->has_id, 0);
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\"}");
}

static void test_ping(void **state) {
  F;
  assert_int_equal(handle(f, "{\"type\":\"ping\"}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\"}");
  /* a topic, valid or not, is ignored */
  assert_int_equal(handle(f, "{\"type\":\"ping\",\"topic\":\"no good\"}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\"}");
  assert_int_equal(handle(f, "{\"type\":\"ping\",\"id\":42}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\",\"id\":42}");
  assert_int_equal(handle(f, " \n\t{ \"type\" : \"ping\" } \r\n"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\"}");
  assert_int_equal(f->nsub + f->nunsub + f->npub, 0);
}

static void test_ids_echoed(void **state) {
  F;
  assert_int_equal(handle(f, "{\"type\":\"subscribe\",\"topic\":\"t\",\"id\":7}"), PROTO_OK);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\",\"id\":7}");
  assert_int_equal(handle(f, "{\"id\":\"abc\",\"type\":\"subscribe\",\"topic\":\"t\"}"), PROTO_OK);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\",\"id\":\"abc\"}");
  assert_int_equal(handle(f, "{\"type\":\"unsubscribe\",\"topic\":\"t\",\"id\":-3}"), PROTO_OK);
  expect_reply(f, "{\"status\":\"unsubscribed\",\"topic\":\"t\",\"id\":-3}");
  /* objects and arrays come back compact, in their order */
  assert_int_equal(
      handle(f,
             "{\"type\":\"subscribe\",\"topic\":\"t\",\"id\": { \"z\" : [1, 2], \"a\" : null }}"),
      PROTO_OK);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\",\"id\":{\"z\":[1,2],\"a\":null}}");
  assert_int_equal(handle(f, "{\"type\":\"ping\",\"id\":[true,false]}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\",\"id\":[true,false]}");
  assert_int_equal(handle(f, "{\"type\":\"ping\",\"id\":null}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\",\"id\":null}");
  /* strings are re-escaped */
  assert_int_equal(handle(f, "{\"type\":\"ping\",\"id\":\"q\\\"\\\\\\n\\u0041\"}"), PROTO_OK);
  expect_reply(f, "{\"type\":\"pong\",\"id\":\"q\\\"\\\\\\nA\"}");
  /* publish: the id goes to the operation and into the reply */
  assert_int_equal(handle(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1,\"id\":\"p1\"}"),
                   PROTO_OK);
  assert_int_equal(f->has_id, 1);
  assert_string_equal(f->id, "\"p1\"");
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\",\"id\":\"p1\"}");
}

static void test_large_id(void **state) {
  F;
  /* an id longer than the reply's stack buffer */
  char id[2000];
  memset(id, 'x', sizeof(id) - 1);
  id[sizeof(id) - 1] = '\0';
  char msg[2100], want[2100];
  snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"topic\":\"t\",\"id\":\"%s\"}", id);
  snprintf(want, sizeof(want), "{\"status\":\"subscribed\",\"topic\":\"t\",\"id\":\"%s\"}", id);
  assert_int_equal(handle(f, msg), PROTO_OK);
  expect_reply(f, want);
  snprintf(msg, sizeof(msg), "{\"type\":\"nope\",\"id\":\"%s\"}", id);
  snprintf(want, sizeof(want),
           "{\"error\":\"Unknown message type\",\"code\":\"unknown_type\",\"id\":\"%s\"}", id);
  assert_int_equal(handle(f, msg), PROTO_ETYPE);
  expect_reply(f, want);
}

/* ---- the payload is passed as the original bytes ---- */

static void expect_publish_payload(struct fake *f, const char *msg, const char *want) {
  int rc = handle(f, msg);
  if (rc != PROTO_OK) {
    print_error("%s: rc %d\n", msg, rc);
    fail();
  }
  assert_int_equal(f->npub, 1);
  f->npub = 0;
  expect_payload(f, want);
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\"}");
}

static void test_publish_raw_payload(void **state) {
  F;
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\": {\"a\" : 1.10} }",
                         "{\"a\" : 1.10}");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1.10}", "1.10");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":-0 }", "-0");
  expect_publish_payload(f,
                         "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":9223372036854775807}",
                         "9223372036854775807");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":true}", "true");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":null}", "null");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":\"\"}", "\"\"");
  expect_publish_payload(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":[ 1,[2 , {}] ]}",
                         "[ 1,[2 , {}] ]");
  /* escapes stay escaped, and brackets in strings do not count */
  expect_publish_payload(
      f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":\"a\\\"}],\\\\\\u00e9\\ud83d\\ude00\"}",
      "\"a\\\"}],\\\\\\u00e9\\ud83d\\ude00\"");
  expect_publish_payload(
      f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":{\"k\\\"}\":\"}{\",\"n\":[\"]\"]}}",
      "{\"k\\\"}\":\"}{\",\"n\":[\"]\"]}");
  /* payload first, whitespace everywhere */
  expect_publish_payload(
      f, "\r\n{ \"payload\"\t:\n[1 ,2]\n ,\"type\" : \"publish\" , \"topic\":\"t\"}\n", "[1 ,2]");
  /* members named payload inside other members are not the payload */
  expect_publish_payload(
      f,
      "{\"x\":{\"payload\":1},\"y\":[{\"payload\":2}],\"z\":\"\\\"payload\\\":3\","
      "\"type\":\"publish\",\"topic\":\"t\",\"payload\":4}",
      "4");
  expect_publish_payload(
      f, "{\"meta\":{\"payload\":0},\"type\":\"publish\",\"topic\":\"t\",\"payload\":\"real\"}",
      "\"real\"");
  /* UTF-8 and an escaped NUL pass through untouched */
  expect_publish_payload(
      f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":\"caf\xc3\xa9 \\u0000\"}",
      "\"caf\xc3\xa9 \\u0000\"");
}

static void test_publish_escaped_payload_key(void **state) {
  F;
  /* the key spelled with an escape cannot be found in the raw text: the
   * payload is re-encoded instead */
  assert_int_equal(
      handle(f, "{\"type\":\"publish\",\"topic\":\"t\",\"pay\\u006coad\": {\"a\" : [1, \"x\"]}}"),
      PROTO_OK);
  assert_int_equal(f->npub, 1);
  expect_payload(f, "{\"a\":[1,\"x\"]}");
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\"}");
}

static void test_publish_large_payload(void **state) {
  F;
  size_t n = 100000;
  char *msg = malloc(n + 100);
  assert_non_null(msg);
  size_t k = (size_t)sprintf(msg, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":\"");
  memset(msg + k, 'z', n);
  k += n;
  k += (size_t)sprintf(msg + k, "\"}");
  assert_int_equal(handle_n(f, msg, k), PROTO_OK);
  assert_int_equal(f->plen, n + 2);
  assert_int_equal(f->payload[0], '"');
  assert_int_equal(f->payload[n + 1], '"');
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\"}");
  free(msg);
}

static void test_publish_pending(void **state) {
  F;
  f->pub_rc = PROTO_PENDING;
  assert_int_equal(handle(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":{},\"id\":9}"),
                   PROTO_PENDING);
  assert_int_equal(f->npub, 1);
  expect_payload(f, "{}");
  assert_int_equal(f->has_id, 1);
  assert_string_equal(f->id, "9");
  expect_no_reply(f);
  /* the later reply */
  assert_int_equal(proto_reply_status(&OPS, f, "published", "t", 1, "9"), 0);
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\",\"id\":9}");
  assert_int_equal(proto_reply_error(&OPS, f, PROTO_EBUS, "t", 1, "9"), 0);
  expect_reply(f,
               "{\"error\":\"Message bus unavailable, message not published\","
               "\"code\":\"bus_unavailable\",\"topic\":\"t\",\"id\":9}");
}

static void test_subscribe_since(void **state) {
  F;
  assert_int_equal(
      handle(
          f,
          "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":41,\"epoch\":\"ab-9Z\"}}"),
      PROTO_OK);
  assert_int_equal(f->has_since, 1);
  assert_int_equal(f->since.offset, 41);
  assert_string_equal(f->since.epoch, "ab-9Z");
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\"}");
  /* "" is the epoch of a topic that had no message yet */
  assert_int_equal(
      handle(f, "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":0,\"epoch\":\"\"}}"),
      PROTO_OK);
  assert_int_equal(f->has_since, 1);
  assert_string_equal(f->since.epoch, "");
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\"}");
  /* a plain subscribe has none */
  assert_int_equal(handle(f, "{\"type\":\"subscribe\",\"topic\":\"t\"}"), PROTO_OK);
  assert_int_equal(f->has_since, 0);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"t\"}");
  /* the operation answers later: nothing now */
  f->sub_rc = PROTO_PENDING;
  assert_int_equal(
      handle(
          f,
          "{\"type\":\"subscribe\",\"topic\":\"t\",\"id\":3,\"since\":{\"offset\":0,\"epoch\":\"e\"}}"),
      PROTO_PENDING);
  assert_string_equal(f->id, "3");
  expect_no_reply(f);
}

static void test_subscribe_bad_since(void **state) {
  F;
  static const char *const bad[] = {
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":5}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":-1,\"epoch\":\"e\"}}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":1.5,\"epoch\":\"e\"}}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":1}}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":1,\"epoch\":\"a:b\"}}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":1,\"epoch\":\"123456789012345678901234567890123\"}}",
      "{\"type\":\"subscribe\",\"topic\":\"t\",\"since\":{\"offset\":1,\"epoch\":7}}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(handle(f, bad[i]), PROTO_EFORMAT);
    expect_reply(
        f, "{\"error\":\"Invalid message format\",\"code\":\"invalid_format\",\"topic\":\"t\"}");
  }
  assert_int_equal(f->nsub, 0);
}

static void test_history(void **state) {
  F;
  f->hist_rc = PROTO_PENDING;
  assert_int_equal(
      handle(f, "{\"type\":\"history\",\"topic\":\"t\",\"since\":7,\"limit\":5,\"id\":1}"),
      PROTO_PENDING);
  assert_int_equal(f->nhist, 1);
  assert_int_equal(f->hist_since, 7);
  assert_int_equal(f->hist_limit, 5);
  assert_string_equal(f->id, "1");
  expect_no_reply(f);
  /* defaults: everything held, at most PROTO_HISTORY_LIMIT_MAX */
  assert_int_equal(handle(f, "{\"type\":\"history\",\"topic\":\"t\"}"), PROTO_PENDING);
  assert_int_equal(f->hist_since, 0);
  assert_int_equal(f->hist_limit, PROTO_HISTORY_LIMIT_MAX);
  static const char *const bad[] = {
      "{\"type\":\"history\",\"topic\":\"t\",\"limit\":0}",
      "{\"type\":\"history\",\"topic\":\"t\",\"limit\":101}",
      "{\"type\":\"history\",\"topic\":\"t\",\"since\":-1}",
      "{\"type\":\"history\",\"topic\":\"t\",\"since\":\"3\"}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(handle(f, bad[i]), PROTO_EFORMAT);
    expect_reply(
        f, "{\"error\":\"Invalid message format\",\"code\":\"invalid_format\",\"topic\":\"t\"}");
  }
  assert_int_equal(f->nhist, 2);
  f->hist_rc = PROTO_ENOHISTORY;
  assert_int_equal(handle(f, "{\"type\":\"history\",\"topic\":\"t\"}"), PROTO_ENOHISTORY);
  expect_reply(
      f, "{\"error\":\"This topic keeps no history\",\"code\":\"no_history\",\"topic\":\"t\"}");
}

static void test_reply_status_ext(void **state) {
  F;
  assert_int_equal(proto_reply_status_ext(&OPS, f, "published", "t", 1, "\"offset\":12", "\"x\""),
                   0);
  expect_reply(f, "{\"status\":\"published\",\"topic\":\"t\",\"offset\":12,\"id\":\"x\"}");
}

/* ---- errors ---- */

#define EFORMAT_REPLY "{\"error\":\"Invalid message format\",\"code\":\"invalid_format\""

static void expect_error(struct fake *f, const char *msg, size_t len, int want_rc,
                         const char *want_reply) {
  int rc = handle_n(f, msg, len);
  if (rc != want_rc) {
    print_error("%.*s: rc %d, want %d\n", (int)len, msg, rc, want_rc);
    fail();
  }
  expect_reply(f, want_reply);
}

#define E(f, msg, rc, reply) expect_error(f, msg, sizeof(msg) - 1, rc, reply)

static void test_invalid_json(void **state) {
  F;
  E(f, "", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\"", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\"}}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\"} x", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\"}{}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{'type':'ping'}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{type:\"ping\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\",}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\",\"id\":01}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\",\"id\":NaN}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"pi\nng\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"\xc3\x28\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"\\ud800\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\"\0}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "\xef\xbb\xbf{\"type\":\"ping\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  assert_int_equal(f->nsub + f->nunsub + f->npub, 0);
}

static void test_not_an_object(void **state) {
  F;
  E(f, "[]", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "[{\"type\":\"ping\"}]", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "\"ping\"", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "42", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "null", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "true", PROTO_EFORMAT, EFORMAT_REPLY "}");
}

static void test_bad_type(void **state) {
  F;
  E(f, "{}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"topic\":\"t\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":1,\"topic\":\"t\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":null}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":[\"ping\"]}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":{\"ping\":1}}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"Type\":\"ping\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  /* the id is echoed in error replies too */
  E(f, "{\"type\":true,\"id\":5}", PROTO_EFORMAT, EFORMAT_REPLY ",\"id\":5}");
  E(f, "{\"id\":\"x\"}", PROTO_EFORMAT, EFORMAT_REPLY ",\"id\":\"x\"}");
}

static void test_unknown_type(void **state) {
  F;
  const char *want = "{\"error\":\"Unknown message type\",\"code\":\"unknown_type\"}";
  E(f, "{\"type\":\"dance\",\"topic\":\"t\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"PING\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"Subscribe\",\"topic\":\"t\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"subscribe \",\"topic\":\"t\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"pong\"}", PROTO_ETYPE, want);
  /* a type with an embedded NUL is not the type before the NUL */
  E(f, "{\"type\":\"ping\\u0000\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"subscribe\\u0000x\",\"topic\":\"t\"}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"publish\\u0000\",\"topic\":\"t\",\"payload\":1}", PROTO_ETYPE, want);
  E(f, "{\"type\":\"dance\",\"id\":[1]}", PROTO_ETYPE,
    "{\"error\":\"Unknown message type\",\"code\":\"unknown_type\",\"id\":[1]}");
  assert_int_equal(f->nsub + f->nunsub + f->npub, 0);
}

static void test_missing_or_bad_topic_field(void **state) {
  F;
  E(f, "{\"type\":\"subscribe\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"unsubscribe\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"publish\",\"payload\":1}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"subscribe\",\"topic\":5}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"subscribe\",\"topic\":null}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"subscribe\",\"topic\":[\"t\"]}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"subscribe\",\"Topic\":\"t\",\"id\":1}", PROTO_EFORMAT,
    EFORMAT_REPLY ",\"id\":1}");
  assert_int_equal(f->nsub + f->nunsub + f->npub, 0);
}

#define ETOPIC_REPLY "{\"error\":\"Invalid topic name\",\"code\":\"invalid_topic\""

static void test_invalid_topic(void **state) {
  F;
  E(f, "{\"type\":\"subscribe\",\"topic\":\"\"}", PROTO_ETOPIC, ETOPIC_REPLY ",\"topic\":\"\"}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"a b\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"a b\"}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"news.*\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"news.*\"}");
  E(f, "{\"type\":\"unsubscribe\",\"topic\":\".a\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\".a\"}");
  E(f, "{\"type\":\"publish\",\"topic\":\"a..b\",\"payload\":1,\"id\":2}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"a..b\",\"id\":2}");
  /* the echoed topic is escaped JSON (UTF-8 kept as is) */
  E(f, "{\"type\":\"subscribe\",\"topic\":\"caf\xc3\xa9\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"caf\xc3\xa9\"}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"a\\\"b\\\\c\\n\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"a\\\"b\\\\c\\n\"}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"a\\u0000b\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"a\\u0000b\"}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"\\ud83d\\ude00\"}", PROTO_ETOPIC,
    ETOPIC_REPLY ",\"topic\":\"\xf0\x9f\x98\x80\"}");
  /* 128 bytes are fine, 129 are not */
  char msg[512], want[512], name[130];
  memset(name, 'n', 129);
  name[128] = '\0';
  snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"topic\":\"%s\"}", name);
  snprintf(want, sizeof(want), "{\"status\":\"subscribed\",\"topic\":\"%s\"}", name);
  assert_int_equal(handle(f, msg), PROTO_OK);
  assert_int_equal(f->tlen, 128);
  expect_reply(f, want);
  name[128] = 'n';
  name[129] = '\0';
  snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"topic\":\"%s\"}", name);
  snprintf(want, sizeof(want), ETOPIC_REPLY ",\"topic\":\"%s\"}", name);
  assert_int_equal(handle(f, msg), PROTO_ETOPIC);
  expect_reply(f, want);
  assert_int_equal(f->nsub, 1);
}

static void test_invalid_long_topic_is_cut(void **state) {
  F;
  /* a very long bad topic is echoed cut to 200 bytes */
  char name[1001], msg[1200], want[1200];
  memset(name, 'x', 1000);
  name[1000] = '\0';
  snprintf(msg, sizeof(msg), "{\"type\":\"subscribe\",\"topic\":\"%s\"}", name);
  name[200] = '\0';
  snprintf(want, sizeof(want), ETOPIC_REPLY ",\"topic\":\"%s\"}", name);
  assert_int_equal(handle(f, msg), PROTO_ETOPIC);
  expect_reply(f, want);
}

static void test_missing_payload(void **state) {
  F;
  E(f, "{\"type\":\"publish\",\"topic\":\"t\"}", PROTO_EFORMAT, EFORMAT_REPLY ",\"topic\":\"t\"}");
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"Payload\":1,\"id\":0}", PROTO_EFORMAT,
    EFORMAT_REPLY ",\"topic\":\"t\",\"id\":0}");
  assert_int_equal(f->npub, 0);
}

static void test_duplicate_keys(void **state) {
  F;
  E(f, "{\"type\":\"ping\",\"type\":\"ping\"}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  E(f, "{\"type\":\"subscribe\",\"topic\":\"a\",\"topic\":\"b\"}", PROTO_EFORMAT,
    EFORMAT_REPLY "}");
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1,\"payload\":2}", PROTO_EFORMAT,
    EFORMAT_REPLY "}");
  /* a duplicate spelled with an escape is still a duplicate */
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1,\"pay\\u006coad\":2}", PROTO_EFORMAT,
    EFORMAT_REPLY "}");
  E(f, "{\"type\":\"ping\",\"id\":1,\"id\":2}", PROTO_EFORMAT, EFORMAT_REPLY "}");
  /* duplicates inside a nested object too */
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":{\"a\":1,\"a\":2}}", PROTO_EFORMAT,
    EFORMAT_REPLY "}");
  assert_int_equal(f->nsub + f->nunsub + f->npub, 0);
}

static void test_operation_errors(void **state) {
  F;
  f->unsub_rc = PROTO_ENOTSUB;
  E(f, "{\"type\":\"unsubscribe\",\"topic\":\"t\"}", PROTO_ENOTSUB,
    "{\"error\":\"Not subscribed to this topic\",\"code\":\"not_subscribed\",\"topic\":\"t\"}");
  assert_int_equal(f->nunsub, 1);

  f->sub_rc = PROTO_ETOOMANY;
  E(f, "{\"type\":\"subscribe\",\"topic\":\"t\",\"id\":\"s\"}", PROTO_ETOOMANY,
    "{\"error\":\"Too many subscriptions\",\"code\":\"too_many_subscriptions\",\"topic\":\"t\","
    "\"id\":\"s\"}");
  assert_int_equal(f->nsub, 1);

  f->pub_rc = PROTO_EBUS;
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1,\"id\":3}", PROTO_EBUS,
    "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
    "\"topic\":\"t\",\"id\":3}");
  assert_int_equal(f->npub, 1);

  f->sub_rc = PROTO_EFORBIDDEN;
  E(f, "{\"type\":\"subscribe\",\"topic\":\"t\"}", PROTO_EFORBIDDEN,
    "{\"error\":\"Not allowed for this topic\",\"code\":\"forbidden\",\"topic\":\"t\"}");
  f->pub_rc = PROTO_ERATE;
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1}", PROTO_ERATE,
    "{\"error\":\"Rate limit exceeded\",\"code\":\"rate_limited\",\"topic\":\"t\"}");
  f->pub_rc = PROTO_EINTERNAL;
  E(f, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1}", PROTO_EINTERNAL,
    "{\"error\":\"Internal server error\",\"code\":\"internal_error\",\"topic\":\"t\"}");
}

static void test_err_codes_and_texts(void **state) {
  (void)state;
  static const struct {
    int err;
    const char *code, *text;
  } t[] = {
      {PROTO_EFORMAT, "invalid_format", "Invalid message format"},
      {PROTO_ETYPE, "unknown_type", "Unknown message type"},
      {PROTO_ETOPIC, "invalid_topic", "Invalid topic name"},
      {PROTO_ENOTSUB, "not_subscribed", "Not subscribed to this topic"},
      {PROTO_ETOOMANY, "too_many_subscriptions", "Too many subscriptions"},
      {PROTO_EBUS, "bus_unavailable", "Message bus unavailable, message not published"},
      {PROTO_EFORBIDDEN, "forbidden", "Not allowed for this topic"},
      {PROTO_ERATE, "rate_limited", "Rate limit exceeded"},
      {PROTO_EINTERNAL, "internal_error", "Internal server error"},
      {-100, "internal_error", "Internal server error"},
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
    assert_string_equal(proto_err_code(t[i].err), t[i].code);
    assert_string_equal(proto_err_text(t[i].err), t[i].text);
  }
}

static void test_reply_error_direct(void **state) {
  F;
  assert_int_equal(proto_reply_error(&OPS, f, PROTO_ERATE, NULL, 0, NULL), 0);
  expect_reply(f, "{\"error\":\"Rate limit exceeded\",\"code\":\"rate_limited\"}");
  /* topic bytes are escaped whatever they are; only tlen bytes count */
  assert_int_equal(proto_reply_error(&OPS, f, PROTO_EFORBIDDEN, "a\"b</c>d", 5, "1"), 0);
  expect_reply(f,
               "{\"error\":\"Not allowed for this topic\",\"code\":\"forbidden\","
               "\"topic\":\"a\\\"b</\",\"id\":1}");
  assert_int_equal(proto_reply_status(&OPS, f, "subscribed", "abcdef", 3, NULL), 0);
  expect_reply(f, "{\"status\":\"subscribed\",\"topic\":\"abc\"}");
  /* the send result is passed back */
  f->send_rc = -1;
  assert_int_equal(proto_reply_status(&OPS, f, "subscribed", "t", 1, NULL), -1);
  assert_int_equal(proto_reply_error(&OPS, f, PROTO_EBUS, "t", 1, NULL), -1);
  for (int i = 0; i < f->nsent; i++) free(f->sent[i]);
  f->nsent = 0;
}

/* Whatever the bad topic, the error reply is valid JSON; the echoed topic,
 * when there is room for it, is a prefix of the one sent. */
static void test_invalid_topic_reply_is_json(void **state) {
  F;
  char names[8][1200];
  size_t lens[8];
  int n = 0;
  /* 199 ASCII bytes, then a 2-byte character across the 200-byte cut */
  memset(names[n], 'x', 199);
  memcpy(names[n] + 199, "\xc3\xa9", 2);
  lens[n++] = 201;
  /* 150 two-byte characters */
  for (int i = 0; i < 150; i++) memcpy(names[n] + 2 * i, "\xc3\xa9", 2);
  lens[n++] = 300;
  /* 60 emoji */
  for (int i = 0; i < 60; i++) memcpy(names[n] + 4 * i, "\xf0\x9f\x98\x80", 4);
  lens[n++] = 240;
  /* control characters and NULs */
  for (int i = 0; i < 300; i++) names[n][i] = (char)(i % 32);
  lens[n++] = 300;
  /* quotes and backslashes */
  for (int i = 0; i < 300; i++) names[n][i] = i % 2 ? '"' : '\\';
  lens[n++] = 300;
  /* long and ASCII but invalid */
  memset(names[n], '*', 1000);
  lens[n++] = 1000;
  for (int k = 0; k < n; k++) {
    json_t *req = json_pack("{s:s, s:s%}", "type", "subscribe", "topic", names[k], lens[k]);
    assert_non_null(req);
    char *msg = json_dumps(req, JSON_COMPACT);
    assert_non_null(msg);
    json_decref(req);
    assert_int_equal(handle(f, msg), PROTO_ETOPIC);
    free(msg);
    assert_int_equal(f->nsent, 1);
    json_error_t err;
    json_t *reply =
        json_loadb(f->sent[0], f->sentlen[0], JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (!reply) {
      print_error("case %d: reply is not JSON (%s): %s\n", k, err.text, f->sent[0]);
      fail();
    }
    assert_string_equal(json_string_value(json_object_get(reply, "code")), "invalid_topic");
    json_t *t = json_object_get(reply, "topic");
    if (t) {
      assert_true(json_is_string(t));
      assert_true(json_string_length(t) <= lens[k]);
      assert_memory_equal(json_string_value(t), names[k], json_string_length(t));
    }
    json_decref(reply);
    free(f->sent[0]);
    f->nsent = 0;
  }
  assert_int_equal(f->nsub, 0);
}

static void test_send_failure(void **state) {
  F;
  f->send_rc = -1;
  /* ping's only effect is its reply */
  assert_int_equal(handle(f, "{\"type\":\"ping\"}"), PROTO_EINTERNAL);
  /* a subscription made stays made */
  assert_int_equal(handle(f, "{\"type\":\"subscribe\",\"topic\":\"t\"}"), PROTO_OK);
  assert_int_equal(f->nsub, 1);
  assert_int_equal(f->nsent, 2);
}

/* ---- proto_find_member ---- */

static int find(const char *json, const char *key, char *out, size_t outsize) {
  size_t len = strlen(json), start = 999, vlen = 999;
  char *b = malloc(len ? len : 1);
  assert_non_null(b);
  memcpy(b, json, len);
  int rc = proto_find_member(b, len, key, &start, &vlen);
  if (rc == 0) {
    assert_true(start <= len && vlen <= len - start);
    assert_true(vlen < outsize);
    memcpy(out, b + start, vlen);
    out[vlen] = '\0';
  }
  free(b);
  return rc;
}

static void expect_member(const char *json, const char *key, const char *want) {
  char out[256];
  if (find(json, key, out, sizeof(out)) != 0) {
    print_error("%s: \"%s\" not found\n", json, key);
    fail();
  }
  if (strcmp(out, want) != 0) {
    print_error("%s: \"%s\" is %s, want %s\n", json, key, out, want);
    fail();
  }
}

static void expect_no_member(const char *json, const char *key) {
  char out[256];
  if (find(json, key, out, sizeof(out)) != -1) {
    print_error("%s: \"%s\" found as %s\n", json, key, out);
    fail();
  }
}

static void test_find_member(void **state) {
  (void)state;
  expect_member("{\"a\":1,\"b\":2}", "a", "1");
  expect_member("{\"a\":1,\"b\":2}", "b", "2");
  expect_member("{\"bb\":1,\"b\":2}", "b", "2");
  expect_member("{\"b\":1,\"bb\":2}", "bb", "2");
  expect_member("  {  \"b\"  :  \"v\"  }  ", "b", "\"v\"");
  expect_member("{\n\t\"b\"\r\n:\n-1.5e+3\n}", "b", "-1.5e+3");
  expect_member("{\"b\":null }", "b", "null");
  expect_member("{\"b\":false}", "b", "false");
  expect_member("{\"b\":\"\"}", "b", "\"\"");
  expect_member("{\"b\":{}}", "b", "{}");
  expect_member("{\"b\":[]}", "b", "[]");
  expect_member("{\"\":1}", "", "1");
  /* nested containers and members of the same name inside them */
  expect_member("{\"x\":{\"b\":1},\"b\":[{\"b\":2}]}", "b", "[{\"b\":2}]");
  expect_member("{\"x\":[[[\"b\"]]],\"b\":{\"c\":{\"d\":[1,{\"e\":{}}]}}}", "b",
                "{\"c\":{\"d\":[1,{\"e\":{}}]}}");
  expect_member("{\"x\":{\"y\":{\"b\":1}}}", "x", "{\"y\":{\"b\":1}}");
  expect_no_member("{\"x\":{\"b\":1}}", "b");
  expect_no_member("{\"x\":[{\"b\":1}]}", "b");
  /* strings holding quotes, brackets, commas and keys */
  expect_member("{\"s\":\"}\\\",\\\"b\\\":0\",\"b\":true}", "b", "true");
  expect_member("{\"s\":\"]}{[\",\"b\":1}", "b", "1");
  expect_member("{\"s\":[\"]\",\"}\"],\"b\":1}", "b", "1");
  expect_member("{\"s\":\"x\\\\\",\"b\":1}", "b", "1");
  expect_member("{\"a\\\\\":1,\"b\":2}", "b", "2");
  expect_member("{\"a\\\\\":1,\"b\":2}", "a\\\\", "1");
  expect_member("{\"a\\\"b\":1,\"b\":2}", "b", "2");
  expect_member("{\"b\":\"\\\"\"}", "b", "\"\\\"\"");
  expect_member("{\"b\":\"a\\\\\"}", "b", "\"a\\\\\"");
  /* a key is compared as written: escapes never match */
  expect_no_member("{\"\\u0062\":1}", "b");
  expect_no_member("{\"\\u0062\":1,\"c\":2}", "b");
  expect_member("{\"\\u0062\":1,\"c\":2}", "c", "2");
  /* not found */
  expect_no_member("{}", "b");
  expect_no_member("{ }", "b");
  expect_no_member("{\"a\":1}", "b");
  expect_no_member("{\"a\":1}", "A");
  expect_no_member("{\"a\":\"b\"}", "b");
  expect_no_member("[\"b\",1]", "b");
  expect_no_member("", "b");
  expect_no_member("   ", "b");
  expect_no_member("\"b\"", "b");
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_subscribe),
      T(test_unsubscribe),
      T(test_publish),
      T(test_ping),
      T(test_ids_echoed),
      T(test_large_id),
      T(test_publish_raw_payload),
      T(test_publish_escaped_payload_key),
      T(test_publish_large_payload),
      T(test_publish_pending),
      T(test_subscribe_since),
      T(test_subscribe_bad_since),
      T(test_history),
      T(test_reply_status_ext),
      T(test_invalid_json),
      T(test_not_an_object),
      T(test_bad_type),
      T(test_unknown_type),
      T(test_missing_or_bad_topic_field),
      T(test_invalid_topic),
      T(test_invalid_long_topic_is_cut),
      T(test_invalid_topic_reply_is_json),
      T(test_send_failure),
      T(test_missing_payload),
      T(test_duplicate_keys),
      T(test_operation_errors),
      cmocka_unit_test(test_err_codes_and_texts),
      T(test_reply_error_direct),
      cmocka_unit_test(test_find_member),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
