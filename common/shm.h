/* shm.h - memory shared by the master and its workers.
 *
 * The master creates one memfd before it starts any worker and hands it to
 * each as file descriptor SHM_FD (3).  Every worker slot has a row that
 * only the worker in that slot writes (no locks, no system calls on the hot
 * path); anyone may read every row.  A worker that starts in a slot clears
 * the parts of its row that describe live state (connection counts per
 * address) and keeps the totals its predecessor left (see shm_worker_start).
 *
 * Per-address connection counts are kept in a fixed table per worker,
 * indexed by a hash of the address: two addresses that share a bucket
 * share a count, which only ever makes the cap stricter for them.
 */
#ifndef TIDINGS_SHM_H
#define TIDINGS_SHM_H

#include <stdint.h>
#include <sys/socket.h>

#include "metrics.h"

#define SHM_FD 3
/* Rows per worker slot: a slot's worker and those still draining after
 * reloads each hold one; slot s owns rows s, s + n, s + 2n, s + 3n. */
#define SHM_ROWS_PER_SLOT 4
#define SHM_IP_BUCKETS 65536

struct shm_row {
  uint32_t pid; /* the worker in the slot now, 0 when none */
  uint32_t ipcount_gen;
  struct metrics m; /* written by the worker only */
  uint16_t ipcount[SHM_IP_BUCKETS];
};

struct shm {
  uint32_t magic;
  uint32_t nrows;
  uint64_t worker_restarts; /* written by the master only */
  uint64_t started_unix;
  struct shm_row rows[];
};

/* Master: creates and maps the segment for nrows workers; returns 0 and
 * the fd (not close-on-exec) or -1. */
int shm_create(unsigned nrows, int *fd, struct shm **out);
/* Worker: maps the segment passed as fd; returns NULL on failure. */
struct shm *shm_attach(int fd);
void shm_detach(struct shm *s);
/* Worker in slot row (0-based) starts: clears its live state. */
void shm_worker_start(struct shm *s, unsigned row, uint32_t pid);

/* Bucket of a client address. */
uint32_t shm_ip_bucket(const struct sockaddr_storage *addr);
/* Connections from the bucket over every worker. */
unsigned shm_ip_total(const struct shm *s, uint32_t bucket);
static inline void shm_ip_add(struct shm *s, unsigned row, uint32_t bucket, int delta) {
  uint16_t *c = &s->rows[row].ipcount[bucket];
  if (delta < 0 && *c == 0) return; /* never wrap below zero */
  __atomic_store_n(c, (uint16_t)(*c + delta), __ATOMIC_RELAXED);
}

#endif
