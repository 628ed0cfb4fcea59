/* wtest.c - a worker under test and WebSocket clients on plain sockets,
 * for the unit tests that run a whole worker (test_bus.c, test_recovery.c).
 *
 * wtest_start() makes a worker with worker_new() on 127.0.0.1 and a free
 * port (the options given after the fixed ones); the test drives its loop:
 * every client call runs it until the client has something to read, up to
 * WAIT_MS.  The worker links whatever bus the test binary links (the local
 * bus).  Everything fails the running cmocka test on error. */
#include "wtest.h"

#include <arpa/inet.h>
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

#include "../../common/log.h"

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t l = sizeof(a);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
  close(fd);
  return ntohs(a.sin_port);
}

/* Starts a worker on 127.0.0.1 with the options given (NULL-terminated)
 * after the fixed ones. */
int wtest_start(void **state, ...) {
  struct fx *fx = calloc(1, sizeof(*fx));
  assert_non_null(fx);
  fx->port = free_port();
  char port[16];
  snprintf(port, sizeof(port), "%d", fx->port);
  const char *fixed[] = {"tidings", "--bind", "127.0.0.1", "--port", port, "--log-level", "error"};
  int argc = 0;
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) fx->argv[argc++] = strdup(fixed[i]);
  va_list ap;
  va_start(ap, state);
  for (const char *a; (a = va_arg(ap, const char *));) {
    assert_true(argc < 23);
    fx->argv[argc++] = strdup(a);
  }
  va_end(ap);
  char err[256];
  /* the config keeps pointers into argv: the strings live as long as fx */
  assert_int_equal(config_parse(&fx->cfg, argc, fx->argv, err, sizeof(err)), 0);
  log_set_level(fx->cfg.log_level);
  int status;
  fx->w = worker_new(&fx->cfg, 1, &status);
  assert_non_null(fx->w);
  *state = fx;
  return 0;
}

int wtest_teardown(void **state) {
  struct fx *fx = *state;
  worker_free(fx->w);
  for (char **a = fx->argv; *a; a++) free(*a);
  free(fx);
  return 0;
}

/* ---- a WebSocket client on a plain socket, driven with the worker's loop ---- */

/* Runs the worker's loop a few times without waiting. */
void turns(struct fx *fx, int n) {
  for (int i = 0; i < n; i++) uv_run(fx->w->loop, UV_RUN_NOWAIT);
}

static int pump_until_readable(struct fx *fx, struct client *cl, int ms) {
  for (int waited = 0; waited <= ms; waited++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    struct pollfd p = {cl->fd, POLLIN, 0};
    if (poll(&p, 1, 1) == 1) return 1;
  }
  return 0;
}

/* What the test waits for, told when it does not come. */
static const char *awaiting;

/* Reads more; returns 0 when the server closed the connection. */
int fill(struct fx *fx, struct client *cl) {
  if (!pump_until_readable(fx, cl, WAIT_MS))
    fail_msg("nothing came within %d ms; waiting for %s", WAIT_MS, awaiting ? awaiting : "a frame");
  ssize_t n = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
  assert_true(n >= 0);
  cl->len += (size_t)n;
  return n > 0;
}

static void consume(struct client *cl, size_t n) {
  memmove(cl->buf, cl->buf + n, cl->len - n);
  cl->len -= n;
}

struct client *client_open(struct fx *fx) {
  return client_open_path(fx, "/");
}

struct client *client_connect(struct fx *fx) {
  struct client *cl = calloc(1, sizeof(*cl));
  assert_non_null(cl);
  cl->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)fx->port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(connect(cl->fd, (struct sockaddr *)&a, sizeof(a)), 0);
  return cl;
}

struct client *client_open_path(struct fx *fx, const char *target) {
  struct client *cl = client_connect(fx);
  char req[2048];
  int n =
      snprintf(req, sizeof(req),
               "GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
               target);
  assert_true(n > 0 && (size_t)n < sizeof(req));
  assert_int_equal(send(cl->fd, req, (size_t)n, 0), (ssize_t)n);
  char *end;
  while (!(end = memmem(cl->buf, cl->len, "\r\n\r\n", 4))) assert_true(fill(fx, cl));
  assert_memory_equal(cl->buf, "HTTP/1.1 101 ", 13);
  consume(cl, (size_t)(end + 4 - cl->buf));
  return cl;
}

void client_close(struct client *cl) {
  close(cl->fd);
  free(cl);
}

/* Sends one frame, masked with a zero key (allowed; the payload stays
 * readable). */
void client_frame(struct client *cl, uint8_t opcode, const char *data, size_t n) {
  assert_true(n < 126);
  uint8_t f[140] = {(uint8_t)(0x80 | opcode), (uint8_t)(0x80 | n), 0, 0, 0, 0};
  memcpy(f + 6, data, n);
  assert_int_equal(send(cl->fd, f, 6 + n, 0), (ssize_t)(6 + n));
}

void client_send(struct client *cl, const char *text) { client_frame(cl, 0x1, text, strlen(text)); }

/* Receives the next text message; returns a malloc'ed string. */
char *client_recv(struct fx *fx, struct client *cl) {
  while (cl->len < 2) assert_true(fill(fx, cl));
  assert_int_equal(cl->buf[0] & 0xff, 0x81);
  size_t n = (uint8_t)cl->buf[1], h = 2;
  if (n == 126) {
    while (cl->len < 4) assert_true(fill(fx, cl));
    n = ((size_t)(uint8_t)cl->buf[2] << 8) | (uint8_t)cl->buf[3];
    h = 4;
  }
  assert_true(n < 65536 - 4);
  while (cl->len < h + n) assert_true(fill(fx, cl));
  char *s = strndup(cl->buf + h, n);
  consume(cl, h + n);
  return s;
}

uint16_t client_recv_close(struct fx *fx, struct client *cl, char *reason, size_t rsize) {
  while (cl->len < 2) assert_true(fill(fx, cl));
  assert_int_equal(cl->buf[0] & 0xff, 0x88);
  size_t n = (uint8_t)cl->buf[1];
  assert_true(n >= 2 && n < 126);
  while (cl->len < 2 + n) assert_true(fill(fx, cl));
  uint16_t code = (uint16_t)(((uint8_t)cl->buf[2] << 8) | (uint8_t)cl->buf[3]);
  snprintf(reason, rsize, "%.*s", (int)(n - 2), cl->buf + 4);
  consume(cl, 2 + n);
  return code;
}

void expect(struct fx *fx, struct client *cl, const char *want) {
  awaiting = want;
  char *got = client_recv(fx, cl);
  awaiting = NULL;
  assert_string_equal(got, want);
  free(got);
}

/* ---- the protocol ---- */

/* Nothing else is on its way to cl: after the loop ran idle for a while
 * (history answers and acknowledgements come on later turns), a ping is
 * answered by the very next frame. */
void fence(struct fx *fx, struct client *cl) {
  turns(fx, 20);
  client_send(cl, "{\"type\":\"ping\"}");
  expect(fx, cl, "{\"type\":\"pong\"}");
}

void expectf(struct fx *fx, struct client *cl, const char *fmt, ...) {
  char want[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(want, sizeof(want), fmt, ap);
  va_end(ap);
  expect(fx, cl, want);
}

void sendf(struct client *cl, const char *fmt, ...) {
  char msg[126];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  assert_true(n > 0 && n < (int)sizeof(msg));
  client_send(cl, msg);
}
