/* shard.h - which of several Redis servers a topic lives on.
 *
 * With --redis URL1,URL2,...,URLn every topic (its channel and its history
 * keys) lives on one of the n servers, chosen by Jump Consistent Hash
 * (Lamping and Veach, 2014) over FNV-1a 64 of the topic's name (without
 * --redis-prefix):
 *
 *   shard = jump(fnv1a64(topic), n)      0-based, in the order given
 *
 * so a topic always maps to the same server, and appending a server to the
 * list moves about 1/(n+1) of the topics, all of them to the new one.  An
 * outside publisher computes the same with the few lines below, or asks
 * `tidings shard TOPIC --redis URL1,...`.  The order of the list matters:
 * add servers at the end. */
#ifndef TIDINGS_SHARD_H
#define TIDINGS_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SHARDS_MAX 32 /* = METRIC_SHARDS of metrics.h */

/* FNV-1a, 64 bits: offset basis 14695981039346656037, prime 1099511628211. */
uint64_t shard_key(const char *topic, size_t tlen);
/* Jump Consistent Hash: a bucket in [0, n) for key; n >= 1. */
unsigned shard_jump(uint64_t key, unsigned n);
/* The shard of topic among n. */
unsigned shard_of(const char *topic, size_t tlen, unsigned n);

/* With --redis-cluster a topic lives on the master of its hash slot:
 * CRC16/XMODEM of the channel <prefix><topic> (or of its hash tag, the
 * bytes between the first '{' and the next '}', when there is one and it is
 * not empty) modulo 16384, as Redis Cluster hashes keys. */
#define SHARD_SLOTS 16384
unsigned shard_slot(const char *key, size_t len);

/* One URL of a comma-separated --redis list, pointing into the list. */
struct shard_url {
  const char *p;
  size_t n;
};

/* Splits list at commas (spaces around a URL are dropped) into out;
 * returns how many URLs, or -1 with one line in err (an empty URL, more
 * than SHARDS_MAX, one that redis_addr_parse refuses, or the same server
 * twice). */
int shard_split(const char *list, struct shard_url out[SHARDS_MAX], char *err, size_t errlen);

#endif
