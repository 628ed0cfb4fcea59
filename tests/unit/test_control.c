/* Unit tests for worker/control.c through the local bus: a real worker
 * with JWT authentication, real TCP clients on loopback, no Redis.  A
 * disconnect order closes every connection of its subject with 4403 and
 * no other, or unsubscribes them from one topic; a count lists every topic
 * with its subscriptions, sorted; a bus that is down refuses at once; and
 * a count still waiting when the worker stops is answered, without a
 * leak. */
#include <jwt.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../worker/bus.h"
#include "../../worker/bus_local.h"
#include "../../worker/control.h"
#include "../../worker/pubsub.h"
#include "../../worker/worker.h"
#include "wtest.h"

#define SECRET "control-test-secret-0123456789abcdef"

static int setup(void **state) { return wtest_start(state, "--jwt-secret", SECRET, NULL); }

/* A client authenticated as sub, allowed every topic these tests use. */
static struct client *open_as(struct fx *fx, const char *sub) {
  jwt_t *j = NULL;
  assert_int_equal(jwt_new(&j), 0);
  assert_int_equal(jwt_add_grant(j, "sub", sub), 0);
  assert_int_equal(jwt_add_grants_json(j,
                                       "{\"subscribe\":[\"news\",\"other\",\"x\",\"y\"],"
                                       "\"publish\":[\"news\",\"other\"]}"),
                   0);
  assert_int_equal(jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)SECRET, strlen(SECRET)), 0);
  char *tok = jwt_encode_str(j);
  assert_non_null(tok);
  jwt_free(j);
  char target[1024];
  snprintf(target, sizeof(target), "/?token=%s", tok);
  free(tok);
  return client_open_path(fx, target);
}

static void subscribe(struct fx *fx, struct client *c, const char *topic) {
  sendf(c, "{\"type\":\"subscribe\",\"topic\":\"%s\"}", topic);
  expectf(fx, c, "{\"status\":\"subscribed\",\"topic\":\"%s\"}", topic);
}

/* What a request's callback saw. */
struct answer {
  struct bus_call call; /* first */
  int fired;
  int err;
  char list[512]; /* "topic=n,..." */
};

static void on_published(struct bus_call *call, int err, const struct bus_pos *pos) {
  struct answer *a = (struct answer *)call;
  assert_null(pos);
  a->fired++;
  a->err = err;
}

static void on_topics(struct bus_call *call, int err, const struct topic_count *v, size_t n) {
  struct answer *a = (struct answer *)call;
  a->fired++;
  a->err = err;
  size_t len = 0;
  for (size_t i = 0; i < n; i++)
    len += (size_t)snprintf(a->list + len, sizeof(a->list) - len, "%s%.*s=%llu", i ? "," : "",
                            (int)v[i].tlen, v[i].topic, (unsigned long long)v[i].here);
}

static void wait_fired(struct fx *fx, struct answer *a) {
  for (int i = 0; i < 1000 && !a->fired; i++) turns(fx, 1);
  assert_int_equal(a->fired, 1);
}

/* ---- tests ---- */

static void disconnect_closes_every_connection_of_the_subject(void **state) {
  struct fx *fx = *state;
  struct client *a1 = open_as(fx, "alice"), *a2 = open_as(fx, "alice"), *b = open_as(fx, "bob"),
                *anon_like = open_as(fx, "alice2");
  subscribe(fx, a1, "news");
  subscribe(fx, b, "news");
  struct answer ans = {.call.published = on_published};
  assert_int_equal(control_disconnect(fx->w, "alice", 5, NULL, 0, &ans.call), BUS_OK);
  assert_int_equal(ans.fired, 0); /* never from inside the call */
  char reason[64];
  assert_int_equal(client_recv_close(fx, a1, reason, sizeof(reason)), CLOSE_REVOKED);
  assert_string_equal(reason, CLOSE_REVOKED_REASON);
  assert_int_equal(client_recv_close(fx, a2, reason, sizeof(reason)), CLOSE_REVOKED);
  wait_fired(fx, &ans);
  assert_int_equal(ans.err, BUS_OK);
  /* bob and a subject that only starts like alice's are untouched */
  client_send(b, "{\"type\":\"publish\",\"topic\":\"news\",\"payload\":1}");
  expect(fx, b, "{\"type\":\"notification\",\"topic\":\"news\",\"payload\":1}");
  expect(fx, b, "{\"status\":\"published\",\"topic\":\"news\"}");
  client_send(anon_like, "{\"type\":\"ping\"}");
  expect(fx, anon_like, "{\"type\":\"pong\"}");
  client_close(a1);
  client_close(a2);
  client_close(b);
  client_close(anon_like);
}

static void disconnect_from_a_topic_unsubscribes_only_it(void **state) {
  struct fx *fx = *state;
  struct client *a = open_as(fx, "alice"), *b = open_as(fx, "bob");
  subscribe(fx, a, "news");
  subscribe(fx, a, "other");
  subscribe(fx, b, "news");
  struct answer ans = {.call.published = on_published};
  assert_int_equal(control_disconnect(fx->w, "alice", 5, "news", 4, &ans.call), BUS_OK);
  expect(fx, a, "{\"status\":\"unsubscribed\",\"topic\":\"news\",\"reason\":\"revoked\"}");
  wait_fired(fx, &ans);
  assert_int_equal(ans.err, BUS_OK);
  client_send(b, "{\"type\":\"publish\",\"topic\":\"news\",\"payload\":2}");
  expect(fx, b, "{\"type\":\"notification\",\"topic\":\"news\",\"payload\":2}");
  expect(fx, b, "{\"status\":\"published\",\"topic\":\"news\"}");
  client_send(b, "{\"type\":\"publish\",\"topic\":\"other\",\"payload\":3}");
  expect(fx, b, "{\"status\":\"published\",\"topic\":\"other\"}");
  /* alice hears "other" and nothing of "news" */
  expect(fx, a, "{\"type\":\"notification\",\"topic\":\"other\",\"payload\":3}");
  fence(fx, a);
  client_close(a);
  client_close(b);
}

static void topics_are_counted_and_sorted(void **state) {
  struct fx *fx = *state;
  struct client *a = open_as(fx, "alice"), *b = open_as(fx, "bob");
  subscribe(fx, a, "y");
  subscribe(fx, a, "x");
  subscribe(fx, b, "x");
  struct answer ans = {.call.topics = on_topics};
  assert_int_equal(control_topics(fx->w, &ans.call), BUS_OK);
  assert_int_equal(ans.fired, 0);
  wait_fired(fx, &ans);
  assert_int_equal(ans.err, BUS_OK);
  assert_string_equal(ans.list, "x=2,y=1");
  client_close(a);
  client_close(b);
}

static void bus_down_refuses_at_once(void **state) {
  struct fx *fx = *state;
  bus_local_set_ready(fx->w->bus, 0);
  struct answer t = {.call.topics = on_topics}, d = {.call.published = on_published};
  assert_int_equal(control_topics(fx->w, &t.call), BUS_EUNAVAILABLE);
  assert_int_equal(control_disconnect(fx->w, "alice", 5, NULL, 0, &d.call), BUS_EUNAVAILABLE);
  turns(fx, 5);
  assert_int_equal(t.fired + d.fired, 0);
  bus_local_set_ready(fx->w->bus, 1);
}

static struct answer stopped = {.call.topics = on_topics};

static int teardown_checks_answer(void **state) {
  wtest_teardown(state);
  assert_int_equal(stopped.fired, 1);
  assert_int_equal(stopped.err, BUS_EUNAVAILABLE);
  return 0;
}

static void stop_with_a_count_waiting(void **state) {
  struct fx *fx = *state;
  assert_int_equal(control_topics(fx->w, &stopped.call), BUS_OK);
  /* the worker stops before the loop answers: teardown_checks_answer */
}

static void a_message_not_understood_is_dropped(void **state) {
  struct fx *fx = *state;
  struct client *a = open_as(fx, "alice");
  const char *bad[] = {"",
                       "not json",
                       "[]",
                       "{\"op\":5}",
                       "{\"op\":\"nope\"}",
                       "{\"op\":\"disconnect\"}",
                       "{\"op\":\"disconnect\",\"sub\":1}",
                       "{\"op\":\"disconnect\",\"sub\":\"alice\",\"topic\":\"..\"}",
                       "{\"op\":\"counts\",\"rid\":99,\"topics\":[[\"x\",1]]}",
                       "{\"op\":\"count\",\"host\":\"elsewhere\",\"to\":\"local\",\"rid\":1}"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(bus_control(fx->w->bus, NULL, bad[i], strlen(bad[i]), NULL), BUS_OK);
  client_send(a, "{\"type\":\"ping\"}");
  expect(fx, a, "{\"type\":\"pong\"}");
  client_close(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(disconnect_closes_every_connection_of_the_subject, setup,
                                      wtest_teardown),
      cmocka_unit_test_setup_teardown(disconnect_from_a_topic_unsubscribes_only_it, setup,
                                      wtest_teardown),
      cmocka_unit_test_setup_teardown(topics_are_counted_and_sorted, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(bus_down_refuses_at_once, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(stop_with_a_count_waiting, setup, teardown_checks_answer),
      cmocka_unit_test_setup_teardown(a_message_not_understood_is_dropped, setup, wtest_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
