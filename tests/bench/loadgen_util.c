/* loadgen: clocks, random numbers, the latency histogram and /proc. */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: masking keys and handshake keys need no cryptographic
 * strength in a load generator, only variety. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

void rng_seed(uint64_t s) { rng_state = s ? s : 0x9e3779b97f4a7c15ull; }

uint64_t rng_next(void) {
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545f4914f6cdd1dull;
}

char *u64_to_dec(char *dst, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) *dst++ = tmp[--n];
  return dst;
}

/* ---- histogram ----
 * index 0..127: [0, 1024) ns in steps of 8 ns;
 * then for each exponent e in [10, 33]: 128 buckets of width 2^(e-7). */

static unsigned hist_index(uint64_t v) {
  if (v < (1ull << HIST_MIN_EXP)) return (unsigned)(v >> (HIST_MIN_EXP - HIST_SUB_BITS));
  if (v >= (1ull << (HIST_MAX_EXP + 1))) return HIST_N - 1;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  unsigned sub = (unsigned)(v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1);
  return (e - HIST_MIN_EXP + 1) * HIST_SUB + sub;
}

static void hist_bounds(unsigned i, double *lo, double *width) {
  if (i < HIST_SUB) {
    *width = (double)(1u << (HIST_MIN_EXP - HIST_SUB_BITS));
    *lo = i * *width;
    return;
  }
  unsigned e = i / HIST_SUB + HIST_MIN_EXP - 1, sub = i % HIST_SUB;
  *width = (double)(1ull << (e - HIST_SUB_BITS));
  *lo = (double)((uint64_t)(HIST_SUB + sub) << (e - HIST_SUB_BITS));
}

void hist_add(struct hist *h, uint64_t v) {
  h->b[hist_index(v)]++;
  h->n++;
  h->sum += (double)v;
  if (v > h->max) h->max = v;
}

double hist_quantile(const struct hist *h, double q) {
  if (!h->n) return 0;
  uint64_t want = (uint64_t)(q * (double)h->n + 0.999999);
  if (want < 1) want = 1;
  if (want > h->n) want = h->n;
  uint64_t acc = 0;
  for (unsigned i = 0; i < HIST_N; i++) {
    acc += h->b[i];
    if (acc >= want) {
      double lo, w;
      hist_bounds(i, &lo, &w);
      double mid = lo + w / 2;
      return mid > (double)h->max ? (double)h->max : mid;
    }
  }
  return (double)h->max;
}

/* ---- /proc ---- */

static int read_file(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = 0;
  return (int)n;
}

long long proc_rss_bytes(pid_t pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  if (read_file(path, buf, sizeof(buf)) < 0) return -1;
  const char *p = strstr(buf, "\nVmRSS:");
  if (!p) return -1;
  return strtoll(p + 7, NULL, 10) * 1024;
}

/* the fields after the ")" that ends the command name: index 0 is the
 * state (field 3 of stat), 1 the ppid, 11 utime, 12 stime */
static int stat_fields(pid_t pid, long long *ppid, long long *cpu) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (read_file(path, buf, sizeof(buf)) < 0) return -1;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  long long v[13];
  for (int i = 0; i < 13; i++) {
    while (*p == ' ') p++;
    if (!*p) return -1;
    if (i == 0) {
      v[i] = 0;
      while (*p && *p != ' ') p++;
      continue;
    }
    v[i] = strtoll(p, &p, 10);
  }
  if (ppid) *ppid = v[1];
  if (cpu) *cpu = v[11] + v[12];
  return 0;
}

long long proc_cpu_ticks(pid_t pid) {
  long long cpu;
  return stat_fields(pid, NULL, &cpu) == 0 ? cpu : -1;
}

static int has_pid(const pid_t *a, size_t n, pid_t p) {
  for (size_t i = 0; i < n; i++)
    if (a[i] == p) return 1;
  return 0;
}

size_t proc_expand(const pid_t *roots, size_t nroots, int tree, pid_t *out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < nroots && n < max; i++)
    if (!has_pid(out, n, roots[i])) out[n++] = roots[i];
  if (!tree) return n;
  /* one pass over /proc collects (pid, ppid); then add children until stable */
  size_t cap = 1024, np = 0;
  pid_t *pp = malloc(cap * 2 * sizeof(pid_t));
  if (!pp) return n;
  DIR *d = opendir("/proc");
  if (!d) {
    free(pp);
    return n;
  }
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!isdigit((unsigned char)de->d_name[0])) continue;
    pid_t pid = (pid_t)atoi(de->d_name);
    long long ppid;
    if (stat_fields(pid, &ppid, NULL) < 0) continue;
    if (np == cap) {
      pid_t *q = realloc(pp, cap * 4 * sizeof(pid_t));
      if (!q) break;
      pp = q;
      cap *= 2;
    }
    pp[2 * np] = pid;
    pp[2 * np + 1] = (pid_t)ppid;
    np++;
  }
  closedir(d);
  for (int changed = 1; changed && n < max;) {
    changed = 0;
    for (size_t i = 0; i < np && n < max; i++)
      if (has_pid(out, n, pp[2 * i + 1]) && !has_pid(out, n, pp[2 * i])) {
        out[n++] = pp[2 * i];
        changed = 1;
      }
  }
  free(pp);
  return n;
}
