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

#define WAIT_MS 5000

struct fx {
  struct config cfg;
  struct worker *w;
  int port;
};

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t l = sizeof(a);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static int setup(void **state) {
  struct fx *fx = calloc(1, sizeof(*fx));
  assert_non_null(fx);
  fx->port = free_port();
  char port[16];
  snprintf(port, sizeof(port), "%d", fx->port);
  char a0[] = "tidings", a1[] = "--bind", a2[] = "127.0.0.1", a3[] = "--port", a5[] = "--log-level",
       a6[] = "warn";
  char *argv[] = {a0, a1, a2, a3, port, a5, a6, NULL};
  char err[256];
  assert_int_equal(config_parse(&fx->cfg, 7, argv, err, sizeof(err)), 0);
  int status;
  fx->w = worker_new(&fx->cfg, 1, &status);
  assert_non_null(fx->w);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  struct fx *fx = *state;
  worker_free(fx->w);
  free(fx);
  return 0;
}

/* ---- a WebSocket client on a plain socket, driven with the worker's loop ---- */

struct client {
  int fd;
  char buf[65536];
  size_t len;
};

/* Runs the worker's loop until the client has bytes to read or the time is
 * up.  Returns 1 when readable. */
static int pump_until_readable(struct fx *fx, struct client *cl, int ms) {
  for (int waited = 0; waited <= ms; waited++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    struct pollfd p = {cl->fd, POLLIN, 0};
    if (poll(&p, 1, 1) == 1) return 1;
  }
  return 0;
}

static void fill(struct fx *fx, struct client *cl) {
  assert_true(pump_until_readable(fx, cl, WAIT_MS));
  ssize_t n = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
  assert_true(n > 0);
  cl->len += (size_t)n;
}

static void consume(struct client *cl, size_t n) {
  memmove(cl->buf, cl->buf + n, cl->len - n);
  cl->len -= n;
}

static struct client *client_open(struct fx *fx) {
  struct client *cl = calloc(1, sizeof(*cl));
  assert_non_null(cl);
  cl->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)fx->port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(connect(cl->fd, (struct sockaddr *)&a, sizeof(a)), 0);
  static const char req[] =
      "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  assert_int_equal(send(cl->fd, req, sizeof(req) - 1, 0), (ssize_t)(sizeof(req) - 1));
  char *end;
  while (!(end = memmem(cl->buf, cl->len, "\r\n\r\n", 4))) fill(fx, cl);
  assert_memory_equal(cl->buf, "HTTP/1.1 101 ", 13);
  consume(cl, (size_t)(end + 4 - cl->buf));
  return cl;
}

static void client_close(struct client *cl) {
  close(cl->fd);
  free(cl);
}

/* Sends one text message, masked with a zero key (allowed, and the payload
 * stays readable). */
static void client_send(struct client *cl, const char *text) {
  size_t n = strlen(text);
  assert_true(n < 126);
  uint8_t f[140] = {0x81, (uint8_t)(0x80 | n), 0, 0, 0, 0};
  memcpy(f + 6, text, n);
  assert_int_equal(send(cl->fd, f, 6 + n, 0), (ssize_t)(6 + n));
}

/* Receives the next text message (the server sends unmasked, unfragmented
 * frames here); returns a malloc'ed string. */
static char *client_recv(struct fx *fx, struct client *cl) {
  while (cl->len < 2) fill(fx, cl);
  assert_int_equal(cl->buf[0] & 0xff, 0x81);
  size_t n = (uint8_t)cl->buf[1], h = 2;
  if (n == 126) {
    while (cl->len < 4) fill(fx, cl);
    n = ((size_t)(uint8_t)cl->buf[2] << 8) | (uint8_t)cl->buf[3];
    h = 4;
  }
  while (cl->len < h + n) fill(fx, cl);
  char *s = strndup(cl->buf + h, n);
  consume(cl, h + n);
  return s;
}

static void expect(struct fx *fx, struct client *cl, const char *want) {
  char *got = client_recv(fx, cl);
  assert_string_equal(got, want);
  free(got);
}

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
      cmocka_unit_test_setup_teardown(publish_reaches_every_subscriber_then_acks, setup, teardown),
      cmocka_unit_test_setup_teardown(publisher_that_subscribes_gets_its_own_message, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(bus_down_refuses_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(topics_first_and_last_reach_the_bus, setup, teardown),
      cmocka_unit_test_setup_teardown(publisher_gone_before_ack, setup, teardown),
      cmocka_unit_test_setup_teardown(stop_with_publish_pending, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
