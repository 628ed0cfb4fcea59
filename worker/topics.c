#include "topics.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

int topics_init(struct topics *ts) {
  memset(ts, 0, sizeof(*ts));
  ts->nbuckets = 64;
  ts->buckets = calloc(ts->nbuckets, sizeof(*ts->buckets));
  return ts->buckets ? 0 : -1;
}

void topics_free(struct topics *ts) {
  for (size_t i = 0; i < ts->nbuckets; i++) {
    struct topic *t = ts->buckets[i];
    while (t) {
      struct topic *n = t->hnext;
      struct sub *s = t->subs;
      while (s) {
        struct sub *sn = s->tnext;
        free(s);
        s = sn;
      }
      free(t);
      t = n;
    }
  }
  free(ts->buckets);
  ts->buckets = NULL;
}

struct topic *topics_find(const struct topics *ts, const char *name, size_t len) {
  struct topic *t = ts->buckets[hash(name, len) & (ts->nbuckets - 1)];
  for (; t; t = t->hnext)
    if (t->len == len && memcmp(t->name, name, len) == 0) return t;
  return NULL;
}

static void rehash(struct topics *ts) {
  size_t n = ts->nbuckets * 2;
  struct topic **b = calloc(n, sizeof(*b));
  if (!b) return; /* keep the old table: slower, still correct */
  for (size_t i = 0; i < ts->nbuckets; i++) {
    struct topic *t = ts->buckets[i];
    while (t) {
      struct topic *next = t->hnext;
      size_t k = hash(t->name, t->len) & (n - 1);
      t->hnext = b[k];
      b[k] = t;
      t = next;
    }
  }
  free(ts->buckets);
  ts->buckets = b;
  ts->nbuckets = n;
}

static void remove_topic(struct topics *ts, struct topic *t) {
  struct topic **pp = &ts->buckets[hash(t->name, t->len) & (ts->nbuckets - 1)];
  while (*pp != t) pp = &(*pp)->hnext;
  *pp = t->hnext;
  ts->ntopics--;
  free(t);
}

int topics_subscribe(struct topics *ts, struct sub **list, void *subscriber, const char *name,
                     size_t len) {
  for (struct sub *s = *list; s; s = s->cnext)
    if (s->topic->len == len && memcmp(s->topic->name, name, len) == 0) return 0;
  struct topic *t = topics_find(ts, name, len);
  int created = 0;
  if (!t) {
    t = malloc(sizeof(*t) + len + 1);
    if (!t) return -1;
    memset(t, 0, sizeof(*t));
    memcpy(t->name, name, len);
    t->name[len] = '\0';
    t->len = len;
    size_t k = hash(name, len) & (ts->nbuckets - 1);
    t->hnext = ts->buckets[k];
    ts->buckets[k] = t;
    ts->ntopics++;
    created = 1;
  }
  struct sub *s = malloc(sizeof(*s));
  if (!s) {
    if (created) remove_topic(ts, t);
    return -1;
  }
  s->topic = t;
  s->subscriber = subscriber;
  s->ext = NULL;
  s->seen = 0;
  s->tprev = NULL;
  s->tnext = t->subs;
  if (t->subs) t->subs->tprev = s;
  t->subs = s;
  t->count++;
  s->cnext = *list;
  *list = s;
  if (t->count == 1 && ts->on_first) ts->on_first(ts->cb_arg, t);
  if (ts->ntopics > ts->nbuckets) rehash(ts);
  return 1;
}

static void unlink_sub(struct topics *ts, struct sub *s) {
  struct topic *t = s->topic;
  if (s->tprev) s->tprev->tnext = s->tnext;
  else t->subs = s->tnext;
  if (s->tnext) s->tnext->tprev = s->tprev;
  if (s->ext && ts->on_sub_gone) ts->on_sub_gone(ts->cb_arg, s);
  free(s);
  if (--t->count == 0) {
    if (ts->on_last) ts->on_last(ts->cb_arg, t);
    remove_topic(ts, t);
  }
}

int topics_unsubscribe(struct topics *ts, struct sub **list, const char *name, size_t len) {
  for (struct sub **pp = list; *pp; pp = &(*pp)->cnext) {
    struct sub *s = *pp;
    if (s->topic->len == len && memcmp(s->topic->name, name, len) == 0) {
      *pp = s->cnext;
      unlink_sub(ts, s);
      return 1;
    }
  }
  return 0;
}

void topics_unsubscribe_all(struct topics *ts, struct sub **list) {
  struct sub *s = *list;
  *list = NULL;
  while (s) {
    struct sub *n = s->cnext;
    unlink_sub(ts, s);
    s = n;
  }
}

void topics_each(const struct topics *ts, void (*fn)(void *arg, const struct topic *t), void *arg) {
  for (size_t i = 0; i < ts->nbuckets; i++)
    for (struct topic *t = ts->buckets[i]; t; t = t->hnext) fn(arg, t);
}
