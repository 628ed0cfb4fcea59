#include "sendbatch.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifdef IORING_SETUP_SUBMIT_ALL
#define SUBMIT_FLAGS IORING_SETUP_SUBMIT_ALL
#else
#define SUBMIT_FLAGS 0
#endif

struct slot {
  void *owner;
  int fd;
  struct msghdr msg;
  struct iovec iov[SENDBATCH_IOV];
};

struct sendbatch {
  struct io_uring ring;
  unsigned cap, n;
  struct slot *slots;
  int *results;  /* of the run in progress, by slot */
  void **owners; /* of the run in progress: slots may be reused by done() */
  int dead;      /* the ring could not be made again: every call is refused */
};

struct sendbatch *sendbatch_new(unsigned slots) {
  struct sendbatch *b = calloc(1, sizeof(*b));
  if (!b) return NULL;
  b->cap = slots;
  b->slots = calloc(slots, sizeof(*b->slots));
  b->results = calloc(slots, sizeof(*b->results));
  b->owners = calloc(slots, sizeof(*b->owners));
  /* the completion queue holds twice the submission queue: one run's
   * completions always fit.  SUBMIT_ALL: a send that fails at submission
   * (a closed descriptor) gets its completion and does not stop the rest. */
  if (!b->slots || !b->results || !b->owners ||
      (io_uring_queue_init(slots, &b->ring, SUBMIT_FLAGS) < 0 &&
       io_uring_queue_init(slots, &b->ring, 0) < 0)) {
    free(b->slots);
    free(b->results);
    free(b->owners);
    free(b);
    return NULL;
  }
  return b;
}

void sendbatch_free(struct sendbatch *b) {
  if (!b) return;
  if (!b->dead) io_uring_queue_exit(&b->ring);
  free(b->slots);
  free(b->results);
  free(b->owners);
  free(b);
}

int sendbatch_alive(const struct sendbatch *b) { return !b->dead; }
int sendbatch_full(const struct sendbatch *b) { return b->n == b->cap; }
size_t sendbatch_pending(const struct sendbatch *b) { return b->n; }

struct iovec *sendbatch_slot(struct sendbatch *b, int fd, void *owner) {
  struct slot *s = &b->slots[b->n];
  s->owner = owner;
  s->fd = fd;
  return s->iov;
}

void sendbatch_commit(struct sendbatch *b, int n) {
  struct slot *s = &b->slots[b->n];
  memset(&s->msg, 0, sizeof(s->msg));
  s->msg.msg_iov = s->iov;
  s->msg.msg_iovlen = (size_t)n;
  b->n++;
}

/* Takes the completions of n submitted sends (all of them: they complete
 * during the submit, so waiting for a late one is short). */
static void reap(struct sendbatch *b, unsigned n) {
  unsigned got = 0;
  while (got < n) {
    struct io_uring_cqe *cqe;
    int rc = io_uring_wait_cqe(&b->ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    if (cqe->user_data < b->cap) b->results[cqe->user_data] = cqe->res;
    io_uring_cqe_seen(&b->ring, cqe);
    got++;
  }
}

size_t sendbatch_run(struct sendbatch *b, void (*done)(void *owner, int result)) {
  unsigned n = b->n, i;
  if (n == 0) return 0;
  if (b->dead) { /* no ring: every send goes back to be written the ordinary way */
    for (i = 0; i < n; i++) b->owners[i] = b->slots[i].owner;
    b->n = 0;
    for (i = 0; i < n; i++) done(b->owners[i], -EAGAIN);
    return n;
  }
  for (i = 0; i < n; i++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    /* the ring has cap entries and at most cap sends are queued */
    io_uring_prep_sendmsg(sqe, b->slots[i].fd, &b->slots[i].msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, i);
    b->results[i] = -EAGAIN; /* not taken by the ring: written the ordinary way */
    b->owners[i] = b->slots[i].owner;
  }
  int rc;
  do rc = io_uring_submit_and_wait(&b->ring, n);
  while (rc == -EINTR);
  if (rc > 0) reap(b, (unsigned)rc);
  if (rc != (int)n) {
    /* sends the kernel did not take would stay queued in the ring, pointing
     * at slots the next run reuses: drop the ring with them and make a new
     * one (or none: the caller then writes the ordinary way) */
    io_uring_queue_exit(&b->ring);
    b->dead = io_uring_queue_init(b->cap, &b->ring, 0) < 0;
  }
  b->n = 0; /* done may queue the next run's sends */
  for (i = 0; i < n; i++) done(b->owners[i], b->results[i]);
  return n;
}
