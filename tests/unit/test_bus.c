/* Unit tests for the bus contract (worker/bus.h) through the local bus
 * (worker/bus_local.c): a real worker (worker_new) on a loop this test
 * drives, real TCP clients on loopback, and no Redis.  They cover what every
 * bus implementation relies on in the worker: a publish reaches every local
 * subscriber as one notification, the publisher's acknowledgement comes from
 * the bus' published() callback, a bus that is down refuses at once, topics
 * are reported to the bus on their first subscriber and after their last,
 * and a publish outstanding when its client leaves or the worker stops is
 * answered without a leak. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/config.h"
#include "../../worker/bus.h"
#include "../../worker/bus_local.h"
#include "../../worker/worker.h"
#include "wtest.h"

static int setup(void **state) { return wtest_start(state, NULL); }

/* ---- tests ---- */

static void publish_reaches_every_subscriber_then_acks(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"news\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"news\"}");
  client_send(b, "{\"type\":\"subscribe\",\"topic\":\"news\"}");
  expect(fx, b, "{\"status\":\"subscribed\",\"topic\":\"news\"}");
  assert_int_equal(bus_local_topics(fx->w->bus), 1);

  client_send(p, "{\"type\":\"publish\",\"topic\":\"news\",\"payload\":{\"n\":1},\"id\":7}");
  expect(fx, p, "{\"status\":\"published\",\"topic\":\"news\",\"id\":7}");
  expect(fx, a, "{\"type\":\"notification\",\"topic\":\"news\",\"payload\":{\"n\":1}}");
  expect(fx, b, "{\"type\":\"notification\",\"topic\":\"news\",\"payload\":{\"n\":1}}");
  client_close(a);
  client_close(b);
  client_close(p);
}

static void publisher_that_subscribes_gets_its_own_message(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"self\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"self\"}");
  client_send(a, "{\"type\":\"publish\",\"topic\":\"self\",\"payload\":\"hi\"}");
  /* the bus delivers at once and acknowledges on the next loop turn */
  expect(fx, a, "{\"type\":\"notification\",\"topic\":\"self\",\"payload\":\"hi\"}");
  expect(fx, a, "{\"status\":\"published\",\"topic\":\"self\"}");
  client_close(a);
}

static void bus_down_refuses_at_once(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx);
  bus_local_set_ready(fx->w->bus, 0);
  assert_false(bus_ready(fx->w->bus));
  client_send(a, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":1,\"id\":\"x\"}");
  expect(
      fx, a,
      "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
      "\"topic\":\"t\",\"id\":\"x\"}");
  bus_local_set_ready(fx->w->bus, 1);
  client_send(a, "{\"type\":\"publish\",\"topic\":\"t\",\"payload\":2}");
  expect(fx, a, "{\"status\":\"published\",\"topic\":\"t\"}");
  client_close(a);
}

static void topics_first_and_last_reach_the_bus(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"x\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"x\"}");
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"y\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"y\"}");
  client_send(b, "{\"type\":\"subscribe\",\"topic\":\"x\"}");
  expect(fx, b, "{\"status\":\"subscribed\",\"topic\":\"x\"}");
  assert_int_equal(bus_local_topics(fx->w->bus), 2);
  client_send(a, "{\"type\":\"unsubscribe\",\"topic\":\"y\"}");
  expect(fx, a, "{\"status\":\"unsubscribed\",\"topic\":\"y\"}");
  assert_int_equal(bus_local_topics(fx->w->bus), 1);
  /* x keeps b after a leaves; it goes when b leaves too */
  client_close(a);
  client_send(b, "{\"type\":\"ping\"}");
  expect(fx, b, "{\"type\":\"pong\"}");
  assert_int_equal(bus_local_topics(fx->w->bus), 1);
  client_close(b);
  for (int i = 0; i < WAIT_MS && fx->w->topics.ntopics; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->topics.ntopics, 0);
  assert_int_equal(bus_local_topics(fx->w->bus), 0);
}

/* The publisher leaves before the acknowledgement: the pending publish
 * keeps its connection alive until the bus answers, then both go. */
static void publisher_gone_before_ack(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *s = client_open(fx);
  client_send(s, "{\"type\":\"subscribe\",\"topic\":\"gone\"}");
  expect(fx, s, "{\"status\":\"subscribed\",\"topic\":\"gone\"}");
  client_send(a, "{\"type\":\"publish\",\"topic\":\"gone\",\"payload\":[1]}");
  client_close(a);
  expect(fx, s, "{\"type\":\"notification\",\"topic\":\"gone\",\"payload\":[1]}");
  client_close(s);
}

/* The worker stops with a publish the bus has not answered: bus_free()
 * answers it (ASan's leak check fails the test otherwise). */
static void stop_with_publish_pending(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"p\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"p\"}");
  client_send(a, "{\"type\":\"publish\",\"topic\":\"p\",\"payload\":true}");
  /* run until the notification is out: the ack is queued for the next turn */
  expect(fx, a, "{\"type\":\"notification\",\"topic\":\"p\",\"payload\":true}");
  client_close(a);
  /* teardown frees the worker right away */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(publish_reaches_every_subscriber_then_acks, setup,
                                      wtest_teardown),
      cmocka_unit_test_setup_teardown(publisher_that_subscribes_gets_its_own_message, setup,
                                      wtest_teardown),
      cmocka_unit_test_setup_teardown(bus_down_refuses_at_once, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(topics_first_and_last_reach_the_bus, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(publisher_gone_before_ack, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(stop_with_publish_pending, setup, wtest_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
