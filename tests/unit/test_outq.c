/* Unit tests for worker/outq.c: a connection's ring of outgoing buffers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/sbuf.h"
#include "../../worker/outq.h"

static struct sbuf *make(const char *s) {
  struct sbuf *b = sbuf_copy(s, strlen(s));
  assert_non_null(b);
  return b;
}

/* Everything the queue would send, in order, as a string. */
static char *contents(const struct outq *q) {
  struct iovec iov[64];
  int n = outq_iov(q, 0, iov, 64);
  assert_int_equal((uint32_t)n, q->count < 64 ? q->count : 64);
  size_t total = 0;
  for (int i = 0; i < n; i++) total += iov[i].iov_len;
  char *s = malloc(total + 1);
  assert_non_null(s);
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    memcpy(s + k, iov[i].iov_base, iov[i].iov_len);
    k += iov[i].iov_len;
  }
  s[k] = '\0';
  return s;
}

static void expect_contents(const struct outq *q, const char *want) {
  char *s = contents(q);
  if (strcmp(s, want) != 0) {
    print_error("queue holds \"%s\"\n      want \"%s\"\n", s, want);
    free(s);
    fail();
  }
  assert_int_equal(q->bytes, strlen(want));
  free(s);
}

static void test_empty(void **state) {
  (void)state;
  struct outq q = {0};
  struct iovec iov[4];
  assert_int_equal(outq_iov(&q, 0, iov, 4), 0);
  outq_consume(&q, 0);
  outq_truncate(&q, 0);
  outq_trim(&q);
  assert_null(q.ring);
  outq_clear(&q);
  assert_null(q.ring);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
}

static void test_push_ref_and_consume(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *a = make("0123456789");
  struct sbuf *b = make("abcdefghijklmnopqrst");
  assert_int_equal(outq_push_ref(&q, a), 0);
  assert_int_equal(outq_push_ref(&q, b), 0);
  assert_int_equal(a->refs, 2);
  assert_int_equal(b->refs, 2);
  assert_int_equal(q.count, 2);
  assert_int_equal(q.cap, 8);
  assert_int_equal(q.bytes, 30);

  struct iovec iov[4];
  assert_int_equal(outq_iov(&q, 0, iov, 4), 2);
  /* the queue points at the shared bytes, no copy */
  assert_ptr_equal(iov[0].iov_base, a->data);
  assert_int_equal(iov[0].iov_len, 10);
  assert_ptr_equal(iov[1].iov_base, b->data);
  assert_int_equal(iov[1].iov_len, 20);

  /* partial consumption inside the first entry */
  outq_consume(&q, 4);
  assert_int_equal(q.count, 2);
  assert_int_equal(q.bytes, 26);
  assert_int_equal(outq_iov(&q, 0, iov, 4), 2);
  assert_ptr_equal(iov[0].iov_base, a->data + 4);
  assert_int_equal(iov[0].iov_len, 6);
  expect_contents(&q, "456789abcdefghijklmnopqrst");

  /* across the boundary: the first entry is released */
  outq_consume(&q, 8);
  assert_int_equal(q.count, 1);
  assert_int_equal(a->refs, 1);
  assert_int_equal(b->refs, 2);
  assert_int_equal(outq_iov(&q, 0, iov, 4), 1);
  assert_ptr_equal(iov[0].iov_base, b->data + 2);
  assert_int_equal(iov[0].iov_len, 18);
  expect_contents(&q, "cdefghijklmnopqrst");

  /* the rest, exactly */
  outq_consume(&q, 18);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
  assert_int_equal(b->refs, 1);
  assert_non_null(q.ring); /* kept until trimmed */
  outq_trim(&q);
  assert_null(q.ring);
  assert_int_equal(q.cap, 0);
  assert_int_equal(q.head, 0);
  sbuf_unref(a);
  sbuf_unref(b);
}

static void test_consume_exact_entries(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *b[4];
  for (int i = 0; i < 4; i++) {
    b[i] = make("xyz");
    assert_int_equal(outq_push_ref(&q, b[i]), 0);
  }
  /* two whole entries in one call */
  outq_consume(&q, 6);
  assert_int_equal(q.count, 2);
  assert_int_equal(b[0]->refs, 1);
  assert_int_equal(b[1]->refs, 1);
  assert_int_equal(b[2]->refs, 2);
  /* one byte at a time */
  for (int i = 0; i < 6; i++) outq_consume(&q, 1);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(b[i]->refs, 1);
    sbuf_unref(b[i]);
  }
  outq_clear(&q);
}

static struct outq_entry *entry(const struct outq *q, uint32_t i) {
  assert_true(i < q->count);
  return &q->ring[(q->head + i) & (q->cap - 1)];
}

static void test_push_copy_coalesces(void **state) {
  (void)state;
  struct outq q = {0};
  assert_int_equal(outq_push_copy(&q, "hello", 5, 0), 0);
  assert_int_equal(outq_push_copy(&q, ", ", 2, 0), 0);
  assert_int_equal(outq_push_copy(&q, "world", 5, 0), 0);
  assert_int_equal(q.count, 1);
  expect_contents(&q, "hello, world");
  struct sbuf *own = entry(&q, 0)->buf;
  assert_int_equal(own->refs, 1);
  assert_int_equal(own->len, 12);
  assert_true(own->cap >= 12);
  outq_clear(&q);
  assert_null(q.ring);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
}

static void test_push_copy_fills_then_spills(void **state) {
  (void)state;
  struct outq q = {0};
  char want[4096];
  size_t n = 0;
  /* one byte at a time until a second entry is needed */
  while (q.count < 2) {
    char c = (char)('a' + n % 26);
    assert_int_equal(outq_push_copy(&q, &c, 1, 0), 0);
    want[n++] = c;
    assert_true(n < sizeof(want) - 1);
  }
  want[n] = '\0';
  struct sbuf *first = entry(&q, 0)->buf;
  /* the first buffer was filled to the byte before spilling */
  assert_int_equal(first->len, first->cap);
  assert_int_equal(first->len, n - 1);
  assert_int_equal(entry(&q, 1)->buf->len, 1);
  expect_contents(&q, want);
  /* a copy that does not fit in the room left starts a new entry */
  struct sbuf *second = entry(&q, 1)->buf;
  size_t room = second->cap - second->len;
  char *big = malloc(room + 1);
  assert_non_null(big);
  memset(big, 'Z', room + 1);
  assert_int_equal(outq_push_copy(&q, big, room + 1, 0), 0);
  assert_int_equal(q.count, 3);
  assert_int_equal(second->len, 1);
  assert_int_equal(q.bytes, n + room + 1);
  /* one that fits exactly is appended */
  outq_clear(&q);
  assert_int_equal(outq_push_copy(&q, "x", 1, 0), 0);
  room = entry(&q, 0)->buf->cap - 1;
  assert_int_equal(outq_push_copy(&q, big, room, 0), 0);
  assert_int_equal(q.count, 1);
  assert_int_equal(q.bytes, room + 1);
  free(big);
  outq_clear(&q);
}

static void test_push_copy_large(void **state) {
  (void)state;
  struct outq q = {0};
  size_t n = 100000;
  char *data = malloc(n + 1);
  assert_non_null(data);
  for (size_t i = 0; i < n; i++) data[i] = (char)('0' + i % 10);
  data[n] = '\0';
  assert_int_equal(outq_push_copy(&q, data, n, 0), 0);
  assert_int_equal(q.count, 1);
  assert_int_equal(q.bytes, n);
  /* it is a copy */
  data[0] = 'X';
  struct iovec iov[2];
  assert_int_equal(outq_iov(&q, 0, iov, 2), 1);
  assert_int_equal(iov[0].iov_len, n);
  assert_int_equal(((char *)iov[0].iov_base)[0], '0');
  assert_memory_equal((char *)iov[0].iov_base + 1, data + 1, n - 1);
  assert_int_equal(outq_push_copy(&q, "tail", 4, 0), 0);
  assert_int_equal(q.bytes, n + 4);
  data[0] = '0';
  char *s = contents(&q);
  assert_memory_equal(s, data, n);
  assert_string_equal(s + n, "tail");
  free(s);
  outq_consume(&q, n + 4);
  assert_int_equal(q.count, 0);
  outq_trim(&q);
  free(data);
}

static void test_push_copy_never_writes_shared(void **state) {
  (void)state;
  struct outq q = {0};
  /* a shared buffer with spare capacity, still referenced by its owner */
  struct sbuf *shared = sbuf_new(100);
  assert_non_null(shared);
  memcpy(shared->data, "frame", 5);
  shared->len = 5;
  assert_int_equal(outq_push_ref(&q, shared), 0);
  assert_int_equal(outq_push_copy(&q, "reply", 5, 0), 0);
  assert_int_equal(q.count, 2);
  assert_int_equal(shared->len, 5);
  assert_int_equal(shared->refs, 2);
  expect_contents(&q, "framereply");
  /* a second queue holding the same frame is unaffected */
  struct outq q2 = {0};
  assert_int_equal(outq_push_ref(&q2, shared), 0);
  assert_int_equal(outq_push_copy(&q2, "other", 5, 0), 0);
  expect_contents(&q2, "frameother");
  expect_contents(&q, "framereply");
  assert_int_equal(shared->refs, 3);
  outq_clear(&q2);
  outq_clear(&q);
  assert_int_equal(shared->refs, 1);
  assert_int_equal(shared->len, 5);
  sbuf_unref(shared);
}

static void test_push_copy_nlocked(void **state) {
  (void)state;
  struct outq q = {0};
  assert_int_equal(outq_push_copy(&q, "a", 1, 0), 0);
  assert_int_equal(q.count, 1);
  /* entry 0 is being written: it must not change under the writer */
  struct iovec inflight[1];
  assert_int_equal(outq_iov(&q, 0, inflight, 1), 1);
  assert_int_equal(outq_push_copy(&q, "b", 1, 1), 0);
  assert_int_equal(q.count, 2);
  assert_int_equal(entry(&q, 0)->buf->len, 1);
  /* entry 1 is not locked: appended to */
  assert_int_equal(outq_push_copy(&q, "c", 1, 1), 0);
  assert_int_equal(q.count, 2);
  /* both locked */
  assert_int_equal(outq_push_copy(&q, "d", 1, 2), 0);
  assert_int_equal(q.count, 3);
  /* more locked than present: still a new entry */
  assert_int_equal(outq_push_copy(&q, "e", 1, 7), 0);
  assert_int_equal(q.count, 4);
  expect_contents(&q, "abcde");
  struct iovec iov[1];
  assert_int_equal(outq_iov(&q, 0, iov, 1), 1);
  assert_ptr_equal(iov[0].iov_base, inflight[0].iov_base);
  assert_int_equal(iov[0].iov_len, 1);
  /* the write completes */
  outq_consume(&q, 1);
  expect_contents(&q, "bcde");
  /* nothing locked now: appended to the last */
  assert_int_equal(outq_push_copy(&q, "f", 1, 0), 0);
  assert_int_equal(q.count, 3);
  expect_contents(&q, "bcdef");
  outq_clear(&q);
}

static void test_push_copy_after_partial_send(void **state) {
  (void)state;
  struct outq q = {0};
  assert_int_equal(outq_push_copy(&q, "abc", 3, 0), 0);
  outq_consume(&q, 2);
  assert_int_equal(outq_push_copy(&q, "def", 3, 0), 0);
  expect_contents(&q, "cdef");
  outq_consume(&q, 4);
  assert_int_equal(q.count, 0);
  outq_clear(&q);
}

static void test_push_copy_zero_length(void **state) {
  (void)state;
  struct outq q = {0};
  /* nothing to send must not leave an entry that no write can finish */
  assert_int_equal(outq_push_copy(&q, "", 0, 0), 0);
  assert_int_equal(q.bytes, 0);
  outq_consume(&q, q.bytes);
  assert_int_equal(q.count, 0);
  assert_int_equal(outq_push_copy(&q, "ab", 2, 0), 0);
  assert_int_equal(outq_push_copy(&q, "", 0, 1), 0);
  expect_contents(&q, "ab");
  outq_consume(&q, q.bytes);
  assert_int_equal(q.count, 0);
  outq_clear(&q);
}

/* n distinct one-character buffers, 'A' + i */
static void push_letters(struct outq *q, struct sbuf **bufs, int from, int to) {
  for (int i = from; i < to; i++) {
    char s[2] = {(char)('A' + i % 26), '\0'};
    bufs[i] = make(s);
    assert_int_equal(outq_push_ref(q, bufs[i]), 0);
    sbuf_unref(bufs[i]); /* the queue's reference is the only one */
  }
}

static void test_ring_growth(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *bufs[64];
  assert_int_equal(q.cap, 0);
  push_letters(&q, bufs, 0, 8);
  assert_int_equal(q.cap, 8);
  push_letters(&q, bufs, 8, 9);
  assert_int_equal(q.cap, 16);
  push_letters(&q, bufs, 9, 16);
  assert_int_equal(q.cap, 16);
  expect_contents(&q, "ABCDEFGHIJKLMNOP");
  push_letters(&q, bufs, 16, 17);
  assert_int_equal(q.cap, 32);
  push_letters(&q, bufs, 17, 40);
  assert_int_equal(q.cap, 64);
  assert_int_equal(q.count, 40);
  expect_contents(&q, "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMN");
  for (int i = 0; i < 40; i++) assert_int_equal(entry(&q, (uint32_t)i)->buf, bufs[i]);
  outq_clear(&q);
}

static void test_ring_growth_while_wrapped(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *bufs[64];
  push_letters(&q, bufs, 0, 8); /* A..H */
  outq_consume(&q, 5);          /* head moves to 5 */
  assert_int_equal(q.count, 3);
  assert_int_equal(q.head, 5);
  push_letters(&q, bufs, 8, 13); /* I..M wrap around to slots 0..4 */
  assert_int_equal(q.cap, 8);
  assert_int_equal(q.count, 8);
  expect_contents(&q, "FGHIJKLM");
  /* full and wrapped: growing must keep the order */
  push_letters(&q, bufs, 13, 14);
  assert_int_equal(q.cap, 16);
  assert_int_equal(q.count, 9);
  expect_contents(&q, "FGHIJKLMN");
  /* wrap the bigger ring too, then grow again */
  outq_consume(&q, 7);
  expect_contents(&q, "MN");
  push_letters(&q, bufs, 14, 28);
  assert_int_equal(q.cap, 16);
  assert_int_equal(q.count, 16);
  assert_true(q.head + q.count > q.cap);
  expect_contents(&q, "MNOPQRSTUVWXYZAB");
  push_letters(&q, bufs, 28, 30);
  assert_int_equal(q.cap, 32);
  expect_contents(&q, "MNOPQRSTUVWXYZABCD");
  /* a partial offset survives the move */
  outq_consume(&q, 1);
  outq_clear(&q);

  push_letters(&q, bufs, 0, 8);
  struct sbuf *big = sbuf_copy("0123456789", 10);
  assert_non_null(big);
  outq_consume(&q, 7); /* only H left, at slot 7 */
  assert_int_equal(outq_push_ref(&q, big), 0);
  outq_consume(&q, 1 + 3); /* H, and 3 bytes into big */
  push_letters(&q, bufs, 8, 15);
  assert_int_equal(q.count, 8);
  push_letters(&q, bufs, 15, 16); /* grows with big at offset 3 in front */
  assert_int_equal(q.cap, 16);
  expect_contents(&q, "3456789IJKLMNOP");
  assert_int_equal(entry(&q, 0)->off, 3);
  assert_int_equal(big->refs, 2);
  outq_clear(&q);
  assert_int_equal(big->refs, 1);
  sbuf_unref(big);
}

static void test_iov_skip_and_max(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *bufs[8];
  push_letters(&q, bufs, 0, 5);
  outq_consume(&q, 1);
  struct iovec iov[8];
  assert_int_equal(outq_iov(&q, 0, iov, 8), 4);
  assert_int_equal(outq_iov(&q, 0, iov, 2), 2);
  assert_int_equal(*(char *)iov[0].iov_base, 'B');
  assert_int_equal(*(char *)iov[1].iov_base, 'C');
  assert_int_equal(outq_iov(&q, 2, iov, 8), 2);
  assert_int_equal(*(char *)iov[0].iov_base, 'D');
  assert_int_equal(*(char *)iov[1].iov_base, 'E');
  assert_int_equal(outq_iov(&q, 1, iov, 1), 1);
  assert_int_equal(*(char *)iov[0].iov_base, 'C');
  assert_int_equal(outq_iov(&q, 3, iov, 8), 1);
  assert_int_equal(outq_iov(&q, 4, iov, 8), 0);
  assert_int_equal(outq_iov(&q, 100, iov, 8), 0);
  assert_int_equal(outq_iov(&q, 0, iov, 0), 0);
  outq_clear(&q);
}

static void test_trim(void **state) {
  (void)state;
  struct outq q = {0};
  assert_int_equal(outq_push_copy(&q, "abc", 3, 0), 0);
  outq_trim(&q); /* not empty: kept */
  assert_non_null(q.ring);
  assert_int_equal(q.count, 1);
  expect_contents(&q, "abc");
  outq_consume(&q, 3);
  outq_trim(&q);
  assert_null(q.ring);
  assert_int_equal(q.cap, 0);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
  outq_trim(&q); /* twice is fine */
  /* usable again after a trim */
  assert_int_equal(outq_push_copy(&q, "def", 3, 0), 0);
  assert_int_equal(q.cap, 8);
  expect_contents(&q, "def");
  outq_consume(&q, 3);
  outq_trim(&q);
  assert_null(q.ring);
  /* trimmed after the ring had wrapped and grown */
  struct sbuf *bufs[20];
  push_letters(&q, bufs, 0, 6);
  outq_consume(&q, 6);
  push_letters(&q, bufs, 6, 20);
  outq_consume(&q, 14);
  outq_trim(&q);
  assert_null(q.ring);
  assert_int_equal(q.head, 0);
  push_letters(&q, bufs, 0, 3);
  expect_contents(&q, "ABC");
  outq_clear(&q);
}

static void test_truncate(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *a = make("aaa"), *b = make("bbbb"), *c = make("ccccc");
  assert_int_equal(outq_push_ref(&q, a), 0);
  assert_int_equal(outq_push_ref(&q, b), 0);
  assert_int_equal(outq_push_ref(&q, c), 0);
  assert_int_equal(outq_push_copy(&q, "dd", 2, 0), 0);
  outq_consume(&q, 1);
  assert_int_equal(q.bytes, 13);
  outq_truncate(&q, 10); /* more than there are: nothing */
  assert_int_equal(q.count, 4);
  outq_truncate(&q, 2);
  assert_int_equal(q.count, 2);
  assert_int_equal(c->refs, 1);
  assert_int_equal(b->refs, 2);
  expect_contents(&q, "aabbbb");
  /* the copies can go on after a truncate */
  assert_int_equal(outq_push_copy(&q, "e", 1, 2), 0);
  expect_contents(&q, "aabbbbe");
  outq_truncate(&q, 1);
  expect_contents(&q, "aa");
  assert_int_equal(b->refs, 1);
  outq_truncate(&q, 0); /* the partly sent entry too */
  assert_int_equal(q.count, 0);
  assert_int_equal(q.bytes, 0);
  assert_int_equal(a->refs, 1);
  outq_trim(&q);
  assert_null(q.ring);
  sbuf_unref(a);
  sbuf_unref(b);
  sbuf_unref(c);
}

/* One frame shared by several queues is freed when the last lets go (ASan's
 * leak checker and use-after-free detection do the rest). */
static void test_shared_refcounts(void **state) {
  (void)state;
  struct outq q1 = {0}, q2 = {0}, q3 = {0};
  struct sbuf *frame = make("broadcast");
  assert_int_equal(outq_push_ref(&q1, frame), 0);
  assert_int_equal(outq_push_ref(&q2, frame), 0);
  assert_int_equal(outq_push_ref(&q3, frame), 0);
  assert_int_equal(outq_push_ref(&q3, frame), 0); /* twice in one queue */
  assert_int_equal(frame->refs, 5);
  sbuf_unref(frame); /* the broadcaster is done with it */
  assert_int_equal(frame->refs, 4);

  outq_consume(&q1, 4);
  assert_int_equal(frame->refs, 4);
  expect_contents(&q1, "dcast");
  outq_consume(&q1, 5);
  assert_int_equal(frame->refs, 3);

  outq_consume(&q3, 9 + 2);
  assert_int_equal(frame->refs, 2);
  expect_contents(&q3, "oadcast");
  expect_contents(&q2, "broadcast");

  outq_clear(&q2);
  assert_int_equal(frame->refs, 1);
  outq_truncate(&q3, 0); /* the last reference: freed here */
  assert_int_equal(q3.count, 0);

  outq_clear(&q1);
  outq_clear(&q3);
}

static void test_clear_releases_everything(void **state) {
  (void)state;
  struct outq q = {0};
  struct sbuf *bufs[30];
  push_letters(&q, bufs, 0, 10);
  assert_int_equal(outq_push_copy(&q, "copy", 4, 0), 0);
  push_letters(&q, bufs, 10, 30);
  assert_int_equal(outq_push_copy(&q, "copy", 4, 0), 0);
  outq_consume(&q, 3);
  outq_clear(&q);
  assert_null(q.ring);
  assert_int_equal(q.cap, 0);
  assert_int_equal(q.count, 0);
  assert_int_equal(q.head, 0);
  assert_int_equal(q.bytes, 0);
}

/* A random mix of operations against a plain byte string model. */
static void test_random_against_model(void **state) {
  (void)state;
  struct outq q = {0};
  char *model = malloc(1 << 20);
  assert_non_null(model);
  size_t mlen = 0;
  uint32_t seed = 12345;
  struct sbuf *shared = make("<shared frame>");
  for (int step = 0; step < 20000; step++) {
    seed = seed * 1103515245u + 12345u;
    uint32_t r = (seed >> 8) % 100;
    if (r < 35) {
      char buf[700];
      size_t n = 1 + (seed >> 4) % (r < 5 ? sizeof(buf) : 40);
      for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + (step + i) % 26);
      assert_int_equal(outq_push_copy(&q, buf, n, 0), 0);
      memcpy(model + mlen, buf, n);
      mlen += n;
    } else if (r < 55) {
      assert_int_equal(outq_push_ref(&q, shared), 0);
      memcpy(model + mlen, shared->data, shared->len);
      mlen += shared->len;
    } else if (r < 95) {
      size_t n = mlen ? (seed >> 3) % (mlen + 1) : 0;
      outq_consume(&q, n);
      memmove(model, model + n, mlen - n);
      mlen -= n;
    } else {
      outq_trim(&q);
    }
    assert_int_equal(q.bytes, mlen);
    assert_true(mlen < (1 << 19));
    if (step % 97 == 0 && q.count <= 64) {
      char *s = contents(&q);
      assert_memory_equal(s, model, mlen);
      free(s);
    }
  }
  outq_clear(&q);
  assert_int_equal(shared->refs, 1);
  sbuf_unref(shared);
  free(model);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_push_ref_and_consume),
      cmocka_unit_test(test_consume_exact_entries),
      cmocka_unit_test(test_push_copy_coalesces),
      cmocka_unit_test(test_push_copy_fills_then_spills),
      cmocka_unit_test(test_push_copy_large),
      cmocka_unit_test(test_push_copy_never_writes_shared),
      cmocka_unit_test(test_push_copy_nlocked),
      cmocka_unit_test(test_push_copy_after_partial_send),
      cmocka_unit_test(test_push_copy_zero_length),
      cmocka_unit_test(test_ring_growth),
      cmocka_unit_test(test_ring_growth_while_wrapped),
      cmocka_unit_test(test_iov_skip_and_max),
      cmocka_unit_test(test_trim),
      cmocka_unit_test(test_truncate),
      cmocka_unit_test(test_shared_refcounts),
      cmocka_unit_test(test_clear_releases_everything),
      cmocka_unit_test(test_random_against_model),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
