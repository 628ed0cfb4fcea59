#include "shard.h"

#include <stdio.h>
#include <string.h>

#include "redisaddr.h"

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL
#define JUMP_MULT 2862933555777941757ULL

uint64_t shard_key(const char *topic, size_t tlen) {
  uint64_t h = FNV_OFFSET;
  for (size_t i = 0; i < tlen; i++) {
    h ^= (unsigned char)topic[i];
    h *= FNV_PRIME;
  }
  return h;
}

/* The key drives a linear congruential generator; each step jumps to the
 * next bucket the key would move to as buckets are added, until that jump
 * passes n. */
unsigned shard_jump(uint64_t key, unsigned n) {
  int64_t b = -1, j = 0;
  while (j < (int64_t)n) {
    b = j;
    key = key * JUMP_MULT + 1;
    j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
  }
  return (unsigned)b;
}

unsigned shard_of(const char *topic, size_t tlen, unsigned n) {
  return n <= 1 ? 0 : shard_jump(shard_key(topic, tlen), n);
}

int shard_split(const char *list, struct shard_url out[SHARDS_MAX], char *err, size_t errlen) {
  int n = 0;
  struct redis_addr seen[SHARDS_MAX];
  for (const char *p = list;;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    const char *s = p, *e = end;
    while (s < e && *s == ' ') s++;
    while (e > s && e[-1] == ' ') e--;
    if (s == e) {
      snprintf(err, errlen, "--redis: an empty URL in the list");
      return -1;
    }
    if (n == SHARDS_MAX) {
      snprintf(err, errlen, "--redis: more than %d servers", SHARDS_MAX);
      return -1;
    }
    char one[1024];
    if ((size_t)(e - s) >= sizeof(one)) {
      snprintf(err, errlen, "--redis: a URL longer than %zu bytes", sizeof(one) - 1);
      return -1;
    }
    memcpy(one, s, (size_t)(e - s));
    one[e - s] = '\0';
    char why[256];
    if (redis_addr_parse(one, &seen[n], why, sizeof(why)) < 0) {
      snprintf(err, errlen, "%s", why);
      return -1;
    }
    for (int i = 0; i < n; i++) {
      const struct redis_addr *a = &seen[i], *b = &seen[n];
      if (a->is_unix == b->is_unix &&
          (a->is_unix ? strcmp(a->path, b->path) == 0
                      : strcmp(a->host, b->host) == 0 && a->port == b->port)) {
        snprintf(err, errlen, "--redis: the same server twice (Pub/Sub ignores the database): %s",
                 one);
        return -1;
      }
    }
    out[n++] = (struct shard_url){s, (size_t)(e - s)};
    if (!*end) return n;
    p = end + 1;
  }
}

/* CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster
 * hashes keys. */
static uint16_t crc16(const char *p, size_t n) {
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)((unsigned char)p[i] << 8);
    for (int k = 0; k < 8; k++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : crc << 1;
  }
  return crc;
}

unsigned shard_slot(const char *key, size_t len) {
  /* a hash tag: the bytes between the first '{' and the next '}', if any */
  const char *open = memchr(key, '{', len);
  if (open) {
    const char *close = memchr(open + 1, '}', len - (size_t)(open + 1 - key));
    if (close && close > open + 1) return crc16(open + 1, (size_t)(close - open - 1)) & 16383;
  }
  return crc16(key, len) & 16383;
}
