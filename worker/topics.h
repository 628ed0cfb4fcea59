/* topics.h - a worker's topics and who subscribes to them.
 *
 * A hash table of topics; each topic keeps a doubly linked list of its
 * subscriptions, and each subscription is also on its connection's singly
 * linked list.  The table owns topics and subscriptions; subscribers are
 * opaque pointers (struct conn *) the table never dereferences.
 *
 * The first subscription to a topic and the removal of its last one are
 * reported through the on_first/on_last callbacks, which is where the
 * worker subscribes and unsubscribes the topic on its bus.  Callbacks must
 * not modify the table; they may set and free the ext fields.
 */
#ifndef TIDINGS_TOPICS_H
#define TIDINGS_TOPICS_H

#include <stddef.h>
#include <stdint.h>

struct sub;

struct topic {
  struct topic *hnext;
  struct sub *subs;
  size_t count;
  void *ext; /* the owner's, NULL at first; release it in on_last */
  size_t len;
  char name[]; /* NUL-terminated */
};

struct sub {
  struct topic *topic;
  void *subscriber;
  struct sub *tprev, *tnext; /* on the topic */
  struct sub *cnext;         /* on the subscriber's list */
  void *ext;                 /* the owner's, NULL at first; see on_sub_gone */
  uint64_t seen;             /* the owner's: highest history offset it was sent, 0 at first */
};

struct topics {
  struct topic **buckets;
  size_t nbuckets; /* power of two */
  size_t ntopics;
  void (*on_first)(void *arg, struct topic *t);
  void (*on_last)(void *arg, struct topic *t);
  /* A subscription whose ext is set is about to be freed. */
  void (*on_sub_gone)(void *arg, struct sub *s);
  void *cb_arg;
};

int topics_init(struct topics *ts);
/* Frees every topic and subscription; no callbacks. */
void topics_free(struct topics *ts);

struct topic *topics_find(const struct topics *ts, const char *name, size_t len);

/* Subscribes subscriber (whose list head is *list) to name.  Returns 1 when
 * added, 0 when already subscribed, -1 when out of memory. */
int topics_subscribe(struct topics *ts, struct sub **list, void *subscriber, const char *name,
                     size_t len);
/* Returns 1 when removed, 0 when the subscriber was not subscribed. */
int topics_unsubscribe(struct topics *ts, struct sub **list, const char *name, size_t len);
/* Removes every subscription on the list (a closing connection). */
void topics_unsubscribe_all(struct topics *ts, struct sub **list);

/* Calls fn for each topic (re-subscribing after a Redis reconnect). */
void topics_each(const struct topics *ts, void (*fn)(void *arg, const struct topic *t), void *arg);

#endif
