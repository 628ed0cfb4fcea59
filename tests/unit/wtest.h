/* wtest.h - a worker under test and WebSocket clients on plain sockets
 * (see wtest.c).  The fixture and each client belong to the test; close
 * clients with client_close() and stop the worker with wtest_teardown(). */
#ifndef TIDINGS_WTEST_H
#define TIDINGS_WTEST_H

#include <stddef.h>
#include <stdint.h>

#include "../../common/config.h"
#include "../../worker/worker.h"

#define WAIT_MS 5000

struct fx {
  struct config cfg;
  struct worker *w;
  int port;
  char *argv[24]; /* the config points into these */
};

struct client {
  int fd;
  char buf[65536];
  size_t len;
};

/* cmocka setup: a worker with the fixed options and the NULL-terminated
 * extra ones into *state; wtest_teardown() frees it. */
int wtest_start(void **state, ...);
int wtest_teardown(void **state);

/* Runs the worker's loop n times without waiting. */
void turns(struct fx *fx, int n);
/* Reads more; returns 0 when the server closed the connection. */
int fill(struct fx *fx, struct client *cl);

struct client *client_open(struct fx *fx); /* after the 101 */
/* The same with the request target (path and query) given. */
struct client *client_open_path(struct fx *fx, const char *target);
/* A TCP connection to the worker and nothing sent yet (for raw handshakes). */
struct client *client_connect(struct fx *fx);
void client_close(struct client *cl);
/* One frame (under 126 bytes), masked with a zero key. */
void client_frame(struct client *cl, uint8_t opcode, const char *data, size_t n);
void client_send(struct client *cl, const char *text);
void sendf(struct client *cl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The next text message, malloc'ed. */
char *client_recv(struct fx *fx, struct client *cl);
/* The next frame is a close (with a code): returns the code, the reason
 * into reason[rsize]. */
uint16_t client_recv_close(struct fx *fx, struct client *cl, char *reason, size_t rsize);
void expect(struct fx *fx, struct client *cl, const char *want);
void expectf(struct fx *fx, struct client *cl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Nothing else is on its way to cl: a ping is answered by the next frame. */
void fence(struct fx *fx, struct client *cl);

#endif
