/* Unit tests for worker/sendbatch.c: many sockets' writes in one io_uring
 * submission.  Real sockets (socketpairs): what the peer reads is what the
 * batch says it wrote. */
#include <errno.h>
#include <fcntl.h>
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

#include "../../worker/sendbatch.h"

#define NSOCK 40

struct peer {
  int fd[2]; /* fd[0] written through the batch, fd[1] read here */
  int calls, result;
  int order;
};

static int done_order;

static void on_done(void *owner, int result) {
  struct peer *p = owner;
  p->calls++;
  p->result = result;
  p->order = done_order++;
}

static void make_pair(struct peer *p) {
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, p->fd), 0);
  assert_int_equal(fcntl(p->fd[0], F_SETFL, O_NONBLOCK), 0);
  assert_int_equal(fcntl(p->fd[1], F_SETFL, O_NONBLOCK), 0);
  p->calls = 0;
  p->result = 0;
}

static void close_pair(struct peer *p) {
  close(p->fd[0]);
  close(p->fd[1]);
}

static struct sendbatch *batch_or_skip(unsigned slots) {
  struct sendbatch *b = sendbatch_new(slots);
  if (!b) {
    fprintf(stderr, "io_uring is not available here: skipped\n");
    skip();
  }
  return b;
}

static void queue(struct sendbatch *b, struct peer *p, const char *a, const char *c) {
  assert_false(sendbatch_full(b));
  struct iovec *iov = sendbatch_slot(b, p->fd[0], p);
  iov[0] = (struct iovec){(void *)a, strlen(a)};
  iov[1] = (struct iovec){(void *)c, strlen(c)};
  sendbatch_commit(b, 2);
}

/* Every socket gets its own bytes, gathered from two iovecs; done is called
 * once per send, in queue order, with the byte count. */
static void test_many_sockets_one_run(void **state) {
  (void)state;
  struct sendbatch *b = batch_or_skip(64);
  struct peer p[NSOCK];
  char msg[NSOCK][32];
  done_order = 0;
  for (int i = 0; i < NSOCK; i++) {
    make_pair(&p[i]);
    snprintf(msg[i], sizeof(msg[i]), "socket %d", i);
    queue(b, &p[i], "hello ", msg[i]);
  }
  assert_int_equal(sendbatch_pending(b), NSOCK);
  assert_int_equal(sendbatch_run(b, on_done), NSOCK);
  assert_int_equal(sendbatch_pending(b), 0);
  for (int i = 0; i < NSOCK; i++) {
    char want[64], got[64] = {0};
    snprintf(want, sizeof(want), "hello %s", msg[i]);
    assert_int_equal(p[i].calls, 1);
    assert_int_equal(p[i].order, i);
    assert_int_equal(p[i].result, (int)strlen(want));
    assert_int_equal(read(p[i].fd[1], got, sizeof(got)), (ssize_t)strlen(want));
    assert_string_equal(got, want);
    close_pair(&p[i]);
  }
  assert_int_equal(sendbatch_run(b, on_done), 0); /* nothing queued: no call */
  sendbatch_free(b);
}

/* A full socket answers -EAGAIN (never waits), a partly full one takes
 * what fits, a closed descriptor fails alone: the other sends of the run
 * are written. */
static void test_full_partial_and_bad(void **state) {
  (void)state;
  struct sendbatch *b = batch_or_skip(8);
  struct peer full, part, bad, ok;
  make_pair(&full);
  make_pair(&part);
  make_pair(&bad);
  make_pair(&ok);
  static char big[1 << 16];
  memset(big, 'x', sizeof(big));
  while (write(full.fd[0], big, sizeof(big)) > 0) {
  }
  assert_int_equal(errno, EAGAIN);
  /* part: empty, with room for less than the send */
  int small = 8192;
  assert_int_equal(setsockopt(part.fd[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  close(bad.fd[0]);
  close(bad.fd[1]);
  bad.fd[0] = bad.fd[1] = -1;
  done_order = 0;
  struct peer *all[] = {&full, &part, &bad, &ok};
  for (int i = 0; i < 4; i++) {
    struct iovec *iov = sendbatch_slot(b, all[i]->fd[0], all[i]);
    iov[0] = (struct iovec){big, sizeof(big)};
    sendbatch_commit(b, 1);
  }
  assert_int_equal(sendbatch_run(b, on_done), 4);
  assert_int_equal(full.result, -EAGAIN);
  assert_true(part.result > 0 && part.result < (int)sizeof(big));
  assert_int_equal(bad.result, -EBADF);
  assert_true(ok.result > 0);
  for (int i = 0; i < 4; i++) assert_int_equal(all[i]->calls, 1);
  close_pair(&full);
  close_pair(&part);
  close_pair(&ok);
  sendbatch_free(b);
}

/* Sends queued from inside done wait for the next run; a run takes at most
 * the batch's size. */
static struct sendbatch *requeue_batch;
static struct peer *requeue_peer;

static void on_done_requeue(void *owner, int result) {
  on_done(owner, result);
  if (owner == requeue_peer && requeue_peer->calls == 1) {
    struct iovec *iov = sendbatch_slot(requeue_batch, requeue_peer->fd[0], requeue_peer);
    iov[0] = (struct iovec){(void *)"again", 5};
    sendbatch_commit(requeue_batch, 1);
  }
}

static void test_queue_from_done(void **state) {
  (void)state;
  struct sendbatch *b = batch_or_skip(2);
  struct peer p[2];
  make_pair(&p[0]);
  make_pair(&p[1]);
  queue(b, &p[0], "a", "b");
  queue(b, &p[1], "c", "d");
  assert_true(sendbatch_full(b));
  requeue_batch = b;
  requeue_peer = &p[0];
  assert_int_equal(sendbatch_run(b, on_done_requeue), 2);
  assert_int_equal(p[1].calls, 1); /* the requeue did not disturb the run */
  assert_int_equal(p[1].result, 2);
  assert_int_equal(sendbatch_pending(b), 1);
  assert_int_equal(sendbatch_run(b, on_done_requeue), 1);
  assert_int_equal(p[0].calls, 2);
  char got[16] = {0};
  assert_int_equal(read(p[0].fd[1], got, sizeof(got)), 7);
  assert_string_equal(got, "abagain");
  close_pair(&p[0]);
  close_pair(&p[1]);
  sendbatch_free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_sockets_one_run),
      cmocka_unit_test(test_full_partial_and_bad),
      cmocka_unit_test(test_queue_from_done),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
