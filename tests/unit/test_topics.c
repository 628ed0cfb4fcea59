/* Unit tests for worker/topics.c: the topic table and its subscriptions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../worker/topics.h"

#define MAX_EVENTS 4096

/* What the callbacks saw. */
struct events {
  struct topics *ts;
  int nfirst, nlast;
  char last_first[256], last_last[256];
  size_t count_at_first, count_at_last;
  void *sub_at_first;
  int ntopics_at_first, ntopics_at_last;
};

static void on_first(void *arg, struct topic *t) {
  struct events *e = arg;
  e->nfirst++;
  snprintf(e->last_first, sizeof(e->last_first), "%s", t->name);
  e->count_at_first = t->count;
  e->sub_at_first = t->subs ? t->subs->subscriber : NULL;
  e->ntopics_at_first = (int)e->ts->ntopics;
  /* the topic is in the table while the callback runs */
  assert_ptr_equal(topics_find(e->ts, t->name, t->len), t);
}

static void on_last(void *arg, struct topic *t) {
  struct events *e = arg;
  e->nlast++;
  snprintf(e->last_last, sizeof(e->last_last), "%s", t->name);
  e->count_at_last = t->count;
  e->ntopics_at_last = (int)e->ts->ntopics;
  assert_null(t->subs);
  assert_ptr_equal(topics_find(e->ts, t->name, t->len), t);
}

struct fixture {
  struct topics ts;
  struct events ev;
};

static int setup(void **state) {
  struct fixture *fx = calloc(1, sizeof(*fx));
  if (!fx || topics_init(&fx->ts) != 0) return -1;
  fx->ev.ts = &fx->ts;
  fx->ts.on_first = on_first;
  fx->ts.on_last = on_last;
  fx->ts.cb_arg = &fx->ev;
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  struct fixture *fx = *state;
  topics_free(&fx->ts);
  free(fx);
  return 0;
}

#define FX                     \
  struct fixture *fx = *state; \
  struct topics *ts = &fx->ts; \
  struct events *ev = &fx->ev; \
  (void)ts;                    \
  (void)ev

static int sub(struct topics *ts, struct sub **list, void *who, const char *name) {
  return topics_subscribe(ts, list, who, name, strlen(name));
}

static int unsub(struct topics *ts, struct sub **list, const char *name) {
  return topics_unsubscribe(ts, list, name, strlen(name));
}

static struct topic *find(const struct topics *ts, const char *name) {
  return topics_find(ts, name, strlen(name));
}

static size_t list_len(const struct sub *list) {
  size_t n = 0;
  for (; list; list = list->cnext) n++;
  return n;
}

/* The topic's subscription list is well linked and holds count entries. */
static void check_topic(const struct topic *t) {
  size_t n = 0;
  const struct sub *prev = NULL;
  for (const struct sub *s = t->subs; s; s = s->tnext) {
    assert_ptr_equal(s->topic, t);
    assert_ptr_equal(s->tprev, prev);
    prev = s;
    n++;
  }
  assert_int_equal(n, t->count);
  assert_int_equal(strlen(t->name), t->len);
}

static int has_subscriber(const struct topic *t, const void *who) {
  for (const struct sub *s = t->subs; s; s = s->tnext)
    if (s->subscriber == who) return 1;
  return 0;
}

static void test_init_empty(void **state) {
  FX;
  assert_int_equal(ts->ntopics, 0);
  assert_true(ts->nbuckets > 0);
  assert_int_equal(ts->nbuckets & (ts->nbuckets - 1), 0);
  assert_null(find(ts, "a"));
  assert_null(topics_find(ts, "", 0));
  struct sub *list = NULL;
  assert_int_equal(unsub(ts, &list, "a"), 0);
  topics_unsubscribe_all(ts, &list);
  assert_null(list);
  assert_int_equal(ev->nfirst + ev->nlast, 0);
}

static void test_subscribe_and_unsubscribe(void **state) {
  FX;
  int alice, bob;
  struct sub *la = NULL, *lb = NULL;

  assert_int_equal(sub(ts, &la, &alice, "news"), 1);
  assert_int_equal(ev->nfirst, 1);
  assert_string_equal(ev->last_first, "news");
  assert_int_equal(ev->count_at_first, 1);
  assert_ptr_equal(ev->sub_at_first, &alice);
  assert_int_equal(ev->ntopics_at_first, 1);
  assert_int_equal(ts->ntopics, 1);
  struct topic *t = find(ts, "news");
  assert_non_null(t);
  assert_string_equal(t->name, "news");
  assert_int_equal(t->len, 4);
  assert_int_equal(t->count, 1);
  check_topic(t);
  assert_non_null(la);
  assert_ptr_equal(la->topic, t);
  assert_ptr_equal(la->subscriber, &alice);

  /* idempotent */
  assert_int_equal(sub(ts, &la, &alice, "news"), 0);
  assert_int_equal(ev->nfirst, 1);
  assert_int_equal(t->count, 1);
  assert_int_equal(list_len(la), 1);

  /* a second subscriber: no callback */
  assert_int_equal(sub(ts, &lb, &bob, "news"), 1);
  assert_int_equal(ev->nfirst, 1);
  assert_ptr_equal(find(ts, "news"), t);
  assert_int_equal(t->count, 2);
  check_topic(t);
  assert_true(has_subscriber(t, &alice) && has_subscriber(t, &bob));

  /* not subscribed */
  assert_int_equal(unsub(ts, &lb, "sports"), 0);
  assert_int_equal(unsub(ts, &lb, "new"), 0);
  assert_int_equal(unsub(ts, &lb, "newsx"), 0);
  assert_int_equal(t->count, 2);

  /* the first goes: no callback */
  assert_int_equal(unsub(ts, &la, "news"), 1);
  assert_null(la);
  assert_int_equal(ev->nlast, 0);
  assert_int_equal(t->count, 1);
  check_topic(t);
  assert_false(has_subscriber(t, &alice));
  assert_int_equal(unsub(ts, &la, "news"), 0); /* twice */

  /* the last goes: on_last, while the topic is still whole, then it is gone */
  assert_int_equal(unsub(ts, &lb, "news"), 1);
  assert_null(lb);
  assert_int_equal(ev->nlast, 1);
  assert_string_equal(ev->last_last, "news");
  assert_int_equal(ev->count_at_last, 0);
  assert_int_equal(ev->ntopics_at_last, 1);
  assert_int_equal(ts->ntopics, 0);
  assert_null(find(ts, "news"));
  assert_int_equal(ev->nfirst, 1);

  /* and it can come back */
  assert_int_equal(sub(ts, &lb, &bob, "news"), 1);
  assert_int_equal(ev->nfirst, 2);
  assert_int_equal(unsub(ts, &lb, "news"), 1);
  assert_int_equal(ev->nlast, 2);
}

static void test_subscriber_lists(void **state) {
  FX;
  int alice;
  struct sub *la = NULL;
  const char *names[] = {"a", "b", "c", "d", "e"};
  for (int i = 0; i < 5; i++) assert_int_equal(sub(ts, &la, &alice, names[i]), 1);
  assert_int_equal(list_len(la), 5);
  assert_int_equal(ev->nfirst, 5);
  /* remove from the middle, the end, the front of the list */
  assert_int_equal(unsub(ts, &la, "c"), 1);
  assert_int_equal(unsub(ts, &la, "a"), 1);
  assert_int_equal(unsub(ts, &la, "e"), 1);
  assert_int_equal(list_len(la), 2);
  assert_int_equal(ev->nlast, 3);
  for (struct sub *s = la; s; s = s->cnext) {
    assert_true(strcmp(s->topic->name, "b") == 0 || strcmp(s->topic->name, "d") == 0);
    assert_ptr_equal(s->subscriber, &alice);
  }
  assert_non_null(find(ts, "b"));
  assert_null(find(ts, "c"));
  assert_int_equal(ts->ntopics, 2);
}

static void test_middle_of_topic_list(void **state) {
  FX;
  int who[5];
  struct sub *lists[5] = {0};
  for (int i = 0; i < 5; i++) assert_int_equal(sub(ts, &lists[i], &who[i], "t"), 1);
  struct topic *t = find(ts, "t");
  assert_int_equal(t->count, 5);
  check_topic(t);
  int order[] = {2, 0, 4, 3};
  for (int k = 0; k < 4; k++) {
    assert_int_equal(unsub(ts, &lists[order[k]], "t"), 1);
    assert_null(lists[order[k]]);
    check_topic(t);
    assert_false(has_subscriber(t, &who[order[k]]));
    assert_int_equal(ev->nlast, 0);
  }
  assert_int_equal(t->count, 1);
  assert_ptr_equal(t->subs->subscriber, &who[1]);
  assert_int_equal(unsub(ts, &lists[1], "t"), 1);
  assert_int_equal(ev->nfirst, 1);
  assert_int_equal(ev->nlast, 1);
}

static void test_unsubscribe_all(void **state) {
  FX;
  int alice, bob;
  struct sub *la = NULL, *lb = NULL;
  assert_int_equal(sub(ts, &la, &alice, "shared1"), 1);
  assert_int_equal(sub(ts, &la, &alice, "only-alice-1"), 1);
  assert_int_equal(sub(ts, &la, &alice, "shared2"), 1);
  assert_int_equal(sub(ts, &la, &alice, "only-alice-2"), 1);
  assert_int_equal(sub(ts, &lb, &bob, "shared1"), 1);
  assert_int_equal(sub(ts, &lb, &bob, "shared2"), 1);
  assert_int_equal(sub(ts, &lb, &bob, "only-bob"), 1);
  assert_int_equal(ev->nfirst, 5);
  assert_int_equal(ts->ntopics, 5);

  topics_unsubscribe_all(ts, &la);
  assert_null(la);
  /* only the topics alice alone had */
  assert_int_equal(ev->nlast, 2);
  assert_int_equal(ts->ntopics, 3);
  assert_null(find(ts, "only-alice-1"));
  assert_null(find(ts, "only-alice-2"));
  assert_int_equal(find(ts, "shared1")->count, 1);
  assert_int_equal(find(ts, "shared2")->count, 1);
  check_topic(find(ts, "shared1"));
  assert_false(has_subscriber(find(ts, "shared1"), &alice));
  assert_int_equal(list_len(lb), 3);

  topics_unsubscribe_all(ts, &la); /* an empty list */
  assert_int_equal(ev->nlast, 2);

  topics_unsubscribe_all(ts, &lb);
  assert_null(lb);
  assert_int_equal(ev->nlast, 5);
  assert_int_equal(ts->ntopics, 0);
  assert_int_equal(ev->nfirst, 5);
}

static void test_names_by_length(void **state) {
  FX;
  int alice;
  struct sub *la = NULL;
  /* names compared by length and bytes, not as C strings */
  assert_int_equal(topics_subscribe(ts, &la, &alice, "abc", 3), 1);
  assert_int_equal(topics_subscribe(ts, &la, &alice, "abc", 2), 1);
  assert_int_equal(topics_subscribe(ts, &la, &alice, "abcd", 3), 0);
  assert_int_equal(ts->ntopics, 2);
  assert_string_equal(topics_find(ts, "abX", 2)->name, "ab");
  assert_null(topics_find(ts, "a", 1));
  assert_int_equal(topics_find(ts, "abc", 3)->len, 3);
  assert_int_equal(topics_unsubscribe(ts, &la, "abc", 2), 1);
  assert_null(topics_find(ts, "ab", 2));
  assert_non_null(topics_find(ts, "abc", 3));
  assert_string_equal(ev->last_last, "ab");
  /* a 128-byte name is stored whole and NUL-terminated */
  char longname[129];
  memset(longname, 'q', 128);
  longname[128] = '\0';
  assert_int_equal(topics_subscribe(ts, &la, &alice, longname, 128), 1);
  struct topic *t = topics_find(ts, longname, 128);
  assert_non_null(t);
  assert_string_equal(t->name, longname);
  topics_unsubscribe_all(ts, &la);
}

static void count_topic(void *arg, const struct topic *t) {
  int *seen = arg;
  int i = atoi(t->name + 2);
  assert_in_range(i, 0, 2999);
  seen[i]++;
}

static void test_many_topics(void **state) {
  FX;
  enum { N = 3000 };
  int alice, bob;
  struct sub *la = NULL, *lb = NULL;
  size_t nb0 = ts->nbuckets;
  char name[32];
  /* alice takes every topic, bob the even ones: the table grows */
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof(name), "t.%d", i);
    assert_int_equal(sub(ts, &la, &alice, name), 1);
    if (i % 2 == 0) assert_int_equal(sub(ts, &lb, &bob, name), 1);
  }
  assert_int_equal(ts->ntopics, N);
  assert_int_equal(ev->nfirst, N);
  assert_true(ts->nbuckets > nb0);
  assert_true(ts->nbuckets >= N);
  assert_int_equal(ts->nbuckets & (ts->nbuckets - 1), 0);
  for (int i = 0; i < N; i++) {
    snprintf(name, sizeof(name), "t.%d", i);
    struct topic *t = find(ts, name);
    assert_non_null(t);
    assert_string_equal(t->name, name);
    assert_int_equal(t->count, i % 2 == 0 ? 2 : 1);
    check_topic(t);
    /* idempotent after the rehash too */
    assert_int_equal(sub(ts, &la, &alice, name), 0);
  }
  assert_null(find(ts, "t.3000"));
  assert_int_equal(list_len(la), N);

  /* each topic once */
  static int seen[N];
  memset(seen, 0, sizeof(seen));
  topics_each(ts, count_topic, seen);
  for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);

  /* unsubscribe some by name, then everything */
  for (int i = 0; i < N; i += 3) {
    snprintf(name, sizeof(name), "t.%d", i);
    assert_int_equal(unsub(ts, &la, name), 1);
  }
  /* odd multiples of 3 had only alice */
  assert_int_equal(ev->nlast, N / 6);
  topics_unsubscribe_all(ts, &la);
  assert_int_equal(ts->ntopics, N / 2);
  assert_int_equal(ev->nlast, N / 2);
  topics_unsubscribe_all(ts, &lb);
  assert_int_equal(ts->ntopics, 0);
  assert_int_equal(ev->nlast, N);
  assert_int_equal(ev->nfirst, N);
  memset(seen, 0, sizeof(seen));
  topics_each(ts, count_topic, seen);
  for (int i = 0; i < N; i++) assert_int_equal(seen[i], 0);
}

struct collect {
  int n;
  char names[8][16];
};

static void collect_topic(void *arg, const struct topic *t) {
  struct collect *c = arg;
  assert_true(c->n < 8);
  snprintf(c->names[c->n++], sizeof(c->names[0]), "%s", t->name);
  assert_true(t->count > 0);
}

static void test_each(void **state) {
  FX;
  int alice, bob;
  struct sub *la = NULL, *lb = NULL;
  struct collect c = {0};
  topics_each(ts, collect_topic, &c);
  assert_int_equal(c.n, 0);
  assert_int_equal(sub(ts, &la, &alice, "x"), 1);
  assert_int_equal(sub(ts, &la, &alice, "y"), 1);
  assert_int_equal(sub(ts, &lb, &bob, "y"), 1);
  assert_int_equal(sub(ts, &lb, &bob, "z"), 1);
  topics_each(ts, collect_topic, &c);
  assert_int_equal(c.n, 3);
  int found = 0;
  for (int i = 0; i < c.n; i++) {
    if (strcmp(c.names[i], "x") == 0) found |= 1;
    if (strcmp(c.names[i], "y") == 0) found |= 2;
    if (strcmp(c.names[i], "z") == 0) found |= 4;
  }
  assert_int_equal(found, 7);
  /* no callbacks from topics_each */
  assert_int_equal(ev->nfirst, 3);
  assert_int_equal(ev->nlast, 0);
}

static void test_no_callbacks_set(void **state) {
  (void)state;
  struct topics ts;
  assert_int_equal(topics_init(&ts), 0);
  int alice;
  struct sub *la = NULL;
  assert_int_equal(sub(&ts, &la, &alice, "a"), 1);
  assert_int_equal(unsub(&ts, &la, "a"), 1);
  assert_int_equal(sub(&ts, &la, &alice, "b"), 1);
  topics_unsubscribe_all(&ts, &la);
  assert_int_equal(ts.ntopics, 0);
  topics_free(&ts);
}

static void test_free_with_subscriptions(void **state) {
  (void)state;
  /* topics_free releases topics and subscriptions still in place, without
   * callbacks (ASan's leak checker checks the rest) */
  struct topics ts;
  struct events ev = {0};
  assert_int_equal(topics_init(&ts), 0);
  ev.ts = &ts;
  ts.on_first = on_first;
  ts.on_last = on_last;
  ts.cb_arg = &ev;
  int who[3];
  struct sub *lists[3] = {0};
  char name[16];
  for (int i = 0; i < 200; i++) {
    snprintf(name, sizeof(name), "n%d", i);
    for (int k = 0; k < 3; k++)
      if ((i + k) % 2 == 0) assert_int_equal(sub(&ts, &lists[k], &who[k], name), 1);
  }
  int nlast = ev.nlast;
  topics_free(&ts);
  assert_null(ts.buckets);
  assert_int_equal(ev.nlast, nlast);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_init_empty),
      T(test_subscribe_and_unsubscribe),
      T(test_subscriber_lists),
      T(test_middle_of_topic_list),
      T(test_unsubscribe_all),
      T(test_names_by_length),
      T(test_many_topics),
      T(test_each),
      cmocka_unit_test(test_no_callbacks_set),
      cmocka_unit_test(test_free_with_subscriptions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
