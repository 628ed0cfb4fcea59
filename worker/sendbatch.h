/* sendbatch.h - many connections' writes in one system call (io_uring).
 *
 * With thousands of connections each socket rarely has more than one
 * message per loop turn, so a worker pays one system call per delivery,
 * and on a machine where a system call is expensive (page-table isolation,
 * virtualization) that is a large part of a delivery's cost.  A batch
 * gathers the writes of a flush and submits them with one io_uring_enter.
 *
 * Every send carries MSG_DONTWAIT: the kernel completes it during the
 * submit (bytes written, -EAGAIN when the socket is full, or an error), so
 * nothing stays in flight once sendbatch_run returns.  The iovecs therefore
 * only need to live until then; they are the batch's own (a slot's), and
 * point into the caller's buffers, which the caller keeps unchanged until
 * its done callback runs.
 *
 * The batch owns its ring and its slots; owners passed in are the caller's.
 */
#ifndef TIDINGS_SENDBATCH_H
#define TIDINGS_SENDBATCH_H

#include <stddef.h>
#include <sys/uio.h>

#define SENDBATCH_IOV 64 /* iovecs per send */

struct sendbatch;

/* A batch of up to `slots` sends, or NULL when io_uring is not available
 * (an old kernel, io_uring_disabled, a seccomp filter): the caller then
 * writes one connection at a time. */
struct sendbatch *sendbatch_new(unsigned slots);
void sendbatch_free(struct sendbatch *b);
/* 0 once the ring is gone (see sendbatch_run): write the ordinary way. */
int sendbatch_alive(const struct sendbatch *b);

/* The iovec array (SENDBATCH_IOV entries) of the next send, to fd on
 * behalf of owner; sendbatch_commit(b, n) then queues it with n of them.
 * Only call when !sendbatch_full(b). */
struct iovec *sendbatch_slot(struct sendbatch *b, int fd, void *owner);
void sendbatch_commit(struct sendbatch *b, int n);
int sendbatch_full(const struct sendbatch *b);
size_t sendbatch_pending(const struct sendbatch *b);

/* Submits every queued send with one system call, then calls
 * done(owner, result) for each in the order they were queued: result is the
 * number of bytes written (maybe fewer than queued), -EAGAIN, or another
 * negative errno.  done may queue new sends (they wait for the next run).
 * Returns the number of sends submitted. */
size_t sendbatch_run(struct sendbatch *b, void (*done)(void *owner, int result));

#endif
