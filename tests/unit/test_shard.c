/* Unit tests of which server a topic lives on (common/shard.c): --redis
 * lists, Jump Consistent Hash over FNV-1a 64, and shard_slot, the CRC16 of
 * the hash tag that Redis Cluster computes (the expected slots were
 * answered by redis-server's CLUSTER KEYSLOT). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/shard.h"

static void fnv1a_known_values(void **state) {
  (void)state;
  /* the FNV-1a 64 test vectors: "" is the offset basis */
  assert_true(shard_key("", 0) == 14695981039346656037ULL);
  assert_true(shard_key("a", 1) == 0xaf63dc4c8601ec8cULL);
  assert_true(shard_key("foobar", 6) == 0x85944171f73967e8ULL);
}

static void jump_stays_in_range_and_moves_little(void **state) {
  (void)state;
  unsigned moved = 0, total = 10000, counts[5] = {0};
  char name[32];
  for (unsigned i = 0; i < total; i++) {
    int n = snprintf(name, sizeof(name), "topic-%u", i);
    unsigned a = shard_of(name, (size_t)n, 4), b = shard_of(name, (size_t)n, 5);
    assert_true(a < 4 && b < 5);
    assert_int_equal(shard_of(name, (size_t)n, 1), 0);
    if (a != b) {
      assert_int_equal(b, 4); /* a topic that moves goes to the new server */
      moved++;
    }
    counts[b]++;
  }
  /* about a fifth moves, and the five share the topics evenly */
  assert_true(moved > total / 5 - total / 25 && moved < total / 5 + total / 25);
  for (int k = 0; k < 5; k++) assert_true(counts[k] > total / 5 * 9 / 10);
}

static void split_takes_lists_as_given(void **state) {
  (void)state;
  struct shard_url u[SHARDS_MAX];
  char err[256];
  const char *list = " redis://a:1 ,redis://b:2,unix:/tmp/r.sock";
  assert_int_equal(shard_split(list, u, err, sizeof(err)), 3);
  assert_int_equal((int)u[0].n, 11);
  assert_memory_equal(u[0].p, "redis://a:1", 11);
  assert_memory_equal(u[1].p, "redis://b:2", 11);
  assert_memory_equal(u[2].p, "unix:/tmp/r.sock", 16);
  assert_int_equal(shard_split("redis://only", u, err, sizeof(err)), 1);
}

static void split_refuses_bad_lists(void **state) {
  (void)state;
  struct shard_url u[SHARDS_MAX];
  char err[256];
  const char *bad[] = {"",
                       "redis://a,",
                       ",redis://a",
                       "redis://a,,redis://b",
                       "redis://a, ",
                       "redis://a,b:6379",
                       "redis://a:6379,redis://a",
                       "redis://h:1/0,redis://h:1/2"}; /* one server, two databases */
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    assert_int_equal(shard_split(bad[i], u, err, sizeof(err)), -1);
    assert_true(err[0] != '\0');
  }
  char many[SHARDS_MAX * 24 + 32] = "";
  size_t len = 0;
  for (int i = 0; i <= SHARDS_MAX; i++)
    len +=
        (size_t)snprintf(many + len, sizeof(many) - len, "%sredis://h:%d", i ? "," : "", 1000 + i);
  assert_int_equal(shard_split(many, u, err, sizeof(err)), -1);
  assert_non_null(strstr(err, "more than"));
}

static void cluster_slots_match_redis(void **state) {
  (void)state;
  struct {
    const char *key;
    unsigned slot;
  } known[] = {{"foo", 12182},
               {"bar", 5061},
               {"123456789", 12739},
               {"{user1000}.following", 3443},
               {"{user1000}.followers", 3443},
               {"a{}b", 13694}, /* an empty tag: the whole key */
               {"{}x", 10595},
               {"{a}{b}", 15495}, /* the first tag */
               {"x{y", 2740},     /* no closing brace: the whole key */
               {"news", 5161},
               {"chat.room1", 10498}};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    assert_int_equal(shard_slot(known[i].key, strlen(known[i].key)), known[i].slot);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fnv1a_known_values),
      cmocka_unit_test(jump_stays_in_range_and_moves_little),
      cmocka_unit_test(split_takes_lists_as_given),
      cmocka_unit_test(split_refuses_bad_lists),
      cmocka_unit_test(cluster_slots_match_redis),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
