#include "shm.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SHM_MAGIC 0x54444e47u /* "TDNG" */

static size_t shm_size(unsigned nrows) {
  return sizeof(struct shm) + (size_t)nrows * sizeof(struct shm_row);
}

int shm_create(unsigned nrows, int *fd, struct shm **out) {
  /* close-on-exec: only workers get it, through their spawn options */
  int f = memfd_create("tidings-shm", MFD_CLOEXEC);
  if (f < 0) return -1;
  size_t size = shm_size(nrows);
  if (ftruncate(f, (off_t)size) < 0) {
    close(f);
    return -1;
  }
  struct shm *s = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
  if (s == MAP_FAILED) {
    close(f);
    return -1;
  }
  s->magic = SHM_MAGIC;
  s->nrows = nrows;
  *fd = f;
  *out = s;
  return 0;
}

struct shm *shm_attach(int fd) {
  struct shm head;
  if (pread(fd, &head, sizeof(head), 0) != (ssize_t)sizeof(head) || head.magic != SHM_MAGIC)
    return NULL;
  struct shm *s = mmap(NULL, shm_size(head.nrows), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return s == MAP_FAILED ? NULL : s;
}

void shm_detach(struct shm *s) {
  if (s) munmap(s, shm_size(s->nrows));
}

void shm_worker_start(struct shm *s, unsigned row, uint32_t pid) {
  struct shm_row *r = &s->rows[row];
  /* connections of a dead predecessor are gone: forget its counts */
  memset(r->ipcount, 0, sizeof(r->ipcount));
  memset(r->m.g, 0, sizeof(r->m.g)); /* live state; totals carry on */
  r->ipcount_gen++;
  __atomic_store_n(&r->pid, pid, __ATOMIC_RELEASE);
}

uint32_t shm_ip_bucket(const struct sockaddr_storage *addr) {
  const unsigned char *p;
  size_t n;
  if (addr->ss_family == AF_INET) {
    p = (const unsigned char *)&((const struct sockaddr_in *)addr)->sin_addr;
    n = 4;
  } else if (addr->ss_family == AF_INET6) {
    p = (const unsigned char *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
    n = 16;
  } else {
    return 0;
  }
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 16777619u;
  }
  return h & (SHM_IP_BUCKETS - 1);
}

unsigned shm_ip_total(const struct shm *s, uint32_t bucket) {
  unsigned t = 0;
  for (unsigned i = 0; i < s->nrows; i++)
    t += __atomic_load_n(&s->rows[i].ipcount[bucket], __ATOMIC_RELAXED);
  return t;
}
