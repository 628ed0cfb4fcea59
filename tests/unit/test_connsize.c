/* Unit tests for what a connection keeps: its memory when idle
 * (docs/architecture.md, "Memory per connection") and its address, kept
 * only as the "ip:port" string of the logs and the per-address bucket.
 *
 * conn_breakdown prints the parts of struct conn and the glibc chunk of
 * each allocation an idle subscribed connection keeps, and holds them to a
 * budget: a field that pushes struct conn into the next malloc size class
 * fails here, to be weighed and the table in docs/architecture.md updated.
 * idle_connections_hold_conn_and_sub runs a whole worker (the local bus,
 * real clients on loopback) and counts, with ASan's allocator, the bytes
 * that subscribed connections still hold once they are idle: one struct
 * conn and one struct sub each, nothing else (no handshake buffer, no
 * wslay context, no output ring, no reply buffer). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/shm.h"
#include "../../worker/conn.h"
#include "../../worker/topics.h"
#include "../../worker/worker.h"
#include "wtest.h"

/* ASan's count of the bytes malloc'ed and not freed (as its
 * <sanitizer/allocator_interface.h> declares it; the unit tests are always
 * built with ASan, and Debian's gcc does not ship the header). */
size_t __sanitizer_get_current_allocated_bytes(void);

/* The chunk glibc's malloc takes for a request of n bytes on x86-64: the
 * request plus the 8-byte size word, rounded up to 16, at least 32.  This
 * is malloc_usable_size(p) + 8 in a release build; the sanitized build
 * this test runs in has another allocator, so it is computed. */
static size_t chunk(size_t n) {
  size_t c = (n + 8 + 15) & ~(size_t)15;
  return c < 32 ? 32 : c;
}

/* The malloc chunks struct conn and struct sub may take.  Raise them only
 * for a reason worth the memory, and update the table. */
#define CONN_CHUNK_BUDGET 544
#define SUB_CHUNK_BUDGET 64

#define PART(name, member)                                                     \
  printf("  %-30s %4zu  (at %zu)\n", name, sizeof(((struct conn *)0)->member), \
         offsetof(struct conn, member))

static void conn_breakdown(void **state) {
  (void)state;
  size_t conn = sizeof(struct conn), sub = sizeof(struct sub);
  size_t named = sizeof(uv_tcp_t) + sizeof(((struct conn *)0)->peer) + sizeof(struct outq) +
                 sizeof(struct frame_tracker);
  printf("struct conn: %zu bytes\n", conn);
  PART("uv_tcp_t (libuv handle)", tcp);
  PART("peer (\"ip:port\" for logs)", peer);
  PART("struct outq (output queue)", q);
  PART("struct frame_tracker", frames);
  printf("  %-30s %4zu\n", "other fields and padding", conn - named);
  printf("malloc chunk of struct conn:    %4zu  (%zu of it allocator overhead)\n", chunk(conn),
         chunk(conn) - conn);
  printf("struct sub (one subscription): %4zu, malloc chunk %zu\n", sub, chunk(sub));
  printf("idle subscribed connection, one topic: %zu bytes in malloc chunks\n",
         chunk(conn) + chunk(sub));
  assert_true(chunk(conn) <= CONN_CHUNK_BUDGET);
  assert_true(chunk(sub) <= SUB_CHUNK_BUDGET);
}

/* ---- the address ---- */

static struct sockaddr_storage v4(const char *ip, uint16_t port) {
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *a = (struct sockaddr_in *)&ss;
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port) {
  struct sockaddr_storage ss = {0};
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(port);
  assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
  return ss;
}

static void expect_peer(const struct sockaddr_storage *ss, const char *want) {
  struct conn *c = calloc(1, sizeof(*c));
  assert_non_null(c);
  conn_set_peer(c, ss);
  assert_string_equal(c->peer, want);
  assert_int_equal(c->ip_bucket, ss ? shm_ip_bucket(ss) : 0);
  free(c);
}

static void peer_strings(void **state) {
  (void)state;
  struct sockaddr_storage ss = v4("203.0.113.7", 4242);
  expect_peer(&ss, "203.0.113.7:4242");
  ss = v4("255.255.255.255", 65535);
  expect_peer(&ss, "255.255.255.255:65535");
  /* the longest the string gets: eight full groups and a 5-digit port */
  ss = v6("fedc:ba98:7654:3210:fedc:ba98:7654:3210", 65535);
  expect_peer(&ss, "fedc:ba98:7654:3210:fedc:ba98:7654:3210:65535");
  assert_int_equal(strlen("fedc:ba98:7654:3210:fedc:ba98:7654:3210:65535") + 1, CONN_PEER_MAX);
  ss = v6("::ffff:192.0.2.1", 80);
  expect_peer(&ss, "::ffff:192.0.2.1:80");
  ss = v6("::1", 1);
  expect_peer(&ss, "::1:1");
  expect_peer(NULL, "?:0");
  ss = (struct sockaddr_storage){.ss_family = AF_UNIX};
  expect_peer(&ss, "?:0");
}

/* ---- a whole worker ---- */

static int setup(void **state) { return wtest_start(state, NULL); }
static int setup_proxy(void **state) { return wtest_start(state, "--proxy-protocol", NULL); }

static struct conn *newest_open(struct fx *fx) {
  struct conn *c = fx->w->open.first; /* conn_list_move() puts it first */
  assert_non_null(c);
  return c;
}

/* Behind HAProxy the peer of the logs and of --max-connections-per-ip is
 * the PROXY header's source, as long as the longest IPv6 text. */
static void proxy_address_is_the_peer(void **state) {
  struct fx *fx = *state;
  struct client *cl = client_connect(fx);
  uint8_t hdr[16 + 36] = {
      0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
      0x55, 0x49, 0x54, 0x0A, 0x21, 0x21, 0x00, 36}; /* v2 PROXY, TCP over IPv6, 36 address bytes */
  struct sockaddr_storage src = v6("fedc:ba98:7654:3210:fedc:ba98:7654:3210", 65535);
  memcpy(hdr + 16, &((struct sockaddr_in6 *)&src)->sin6_addr, 16);
  memset(hdr + 32, 0, 16); /* destination ::, port 0 */
  memcpy(hdr + 48, &((struct sockaddr_in6 *)&src)->sin6_port, 2);
  const char req[] =
      "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  assert_int_equal(send(cl->fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
  assert_int_equal(send(cl->fd, req, sizeof(req) - 1, 0), (ssize_t)(sizeof(req) - 1));
  while (!memmem(cl->buf, cl->len, "\r\n\r\n", 4)) assert_true(fill(fx, cl));
  assert_memory_equal(cl->buf, "HTTP/1.1 101 ", 13);
  struct conn *c = newest_open(fx);
  assert_string_equal(c->peer, "fedc:ba98:7654:3210:fedc:ba98:7654:3210:65535");
  assert_int_equal(c->ip_bucket, shm_ip_bucket(&src));
  client_close(cl);
}

/* Without PROXY the peer is the socket's. */
static void socket_address_is_the_peer(void **state) {
  struct fx *fx = *state;
  struct client *cl = client_open(fx);
  struct sockaddr_storage me;
  socklen_t l = sizeof(me);
  assert_int_equal(getsockname(cl->fd, (struct sockaddr *)&me, &l), 0);
  char want[CONN_PEER_MAX];
  snprintf(want, sizeof(want), "127.0.0.1:%d", ntohs(((struct sockaddr_in *)&me)->sin_port));
  struct conn *c = newest_open(fx);
  assert_string_equal(c->peer, want);
  assert_int_equal(c->ip_bucket, shm_ip_bucket(&me));
  client_close(cl);
}

#define NIDLE 32

static void subscribe(struct fx *fx, struct client *cl) {
  client_send(cl, "{\"type\":\"subscribe\",\"topic\":\"idle\"}");
  expect(fx, cl, "{\"status\":\"subscribed\",\"topic\":\"idle\"}");
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs the worker until the bytes its clients hold come down to want
 * (output rings are released on the worker's 1-second tick), at most 3 s;
 * returns the last count. */
static size_t settle(struct fx *fx, size_t base, size_t want) {
  size_t held = 0;
  for (uint64_t end = now_ms() + 3000; now_ms() < end;) {
    turns(fx, 1);
    held = __sanitizer_get_current_allocated_bytes() - base;
    if (held == want) break;
    usleep(10000);
  }
  return held;
}

static void idle_connections_hold_conn_and_sub(void **state) {
  struct fx *fx = *state;
  struct client *cl[NIDLE];
  /* a first round, closed again: the topic, the loop's table of file
   * descriptors and whatever else a worker sets up once are in place */
  for (int i = 0; i < NIDLE; i++) subscribe(fx, cl[i] = client_open(fx));
  struct client *keep = cl[0];
  for (int i = 1; i < NIDLE; i++) client_close(cl[i]);
  /* the others gone, and the one kept idle (its ring released by a tick) */
  for (uint64_t end = now_ms() + 3000;
       (fx->w->nconns > 1 || newest_open(fx)->q.ring) && now_ms() < end;) {
    turns(fx, 1);
    usleep(1000);
  }
  assert_int_equal(fx->w->nconns, 1);
  assert_null(newest_open(fx)->q.ring);
  size_t base = __sanitizer_get_current_allocated_bytes();
  for (int i = 1; i < NIDLE; i++) subscribe(fx, cl[i] = client_open(fx));
  size_t clients = (NIDLE - 1) * sizeof(struct client); /* the test's own */
  size_t want = clients + (NIDLE - 1) * (sizeof(struct conn) + sizeof(struct sub));
  size_t held = settle(fx, base, want);
  printf("%d idle subscribed connections hold %zu bytes each (struct conn %zu + struct sub %zu)\n",
         NIDLE - 1, (held - clients) / (NIDLE - 1), sizeof(struct conn), sizeof(struct sub));
  assert_int_equal(held, want);
  for (int i = 0; i < NIDLE; i++) client_close(i ? cl[i] : keep);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(conn_breakdown),
      cmocka_unit_test(peer_strings),
      cmocka_unit_test_setup_teardown(proxy_address_is_the_peer, setup_proxy, wtest_teardown),
      cmocka_unit_test_setup_teardown(socket_address_is_the_peer, setup, wtest_teardown),
      cmocka_unit_test_setup_teardown(idle_connections_hold_conn_and_sub, setup, wtest_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
