/* Unit tests for topics with history (worker/recovery.c): offsets, epochs,
 * the seam between a resumed subscription's history and the live messages,
 * gap catch-up, resync after a re-subscription, and history requests.
 *
 * A real worker (worker_new) runs on a loop this test drives, with real TCP
 * clients on loopback, over the local bus (worker/bus_local.c) keeping the
 * history in memory: no Redis.  The bus' test controls (bus_local.h) make
 * what is hard to make with Redis: lost deliveries, history answers that
 * come late (while live messages go on), a lost history (a new epoch),
 * duplicates, a re-subscription, messages from outside.
 *
 * Publishes go through a publisher client with payload {"n":N}; the local
 * bus delivers inside bus_publish() and acknowledges on the next loop turn.
 * "Nothing more" is checked with a fence: after the loop has run idle for a
 * while, a ping must be answered by the very next frame.  ASan's leak check
 * (make unit) covers the cases where a client or the worker goes while a
 * history read is outstanding. */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/config.h"
#include "../../common/log.h"
#include "../../worker/bus.h"
#include "../../worker/bus_local.h"
#include "../../worker/worker.h"
#include "wtest.h"

#define EP BUS_LOCAL_EPOCH

static int setup_hist(void **state) { return wtest_start(state, "--history-size", "50", NULL); }

/* history for "h*" and "keep" only */
static int setup_hist_topics(void **state) {
  return wtest_start(state, "--history-size", "50", "--history-topics", "h*,keep", NULL);
}

static int setup_no_hist(void **state) { return wtest_start(state, NULL); }

/* a resuming subscription may hold little while its history is read */
static int setup_small_queue(void **state) {
  return wtest_start(state, "--history-size", "50", "--max-queued-bytes", "4096", NULL);
}

/* room for the ten thousand notifications of a catch-up overflow */
static int setup_big_queue(void **state) {
  return wtest_start(state, "--history-size", "50", "--max-queued-bytes", "16m", NULL);
}

/* Publishes {"n":n} to topic through p; the acknowledgement must carry
 * offset (0: no "offset"). */
static void publish(struct fx *fx, struct client *p, const char *topic, int n, uint64_t offset) {
  sendf(p, "{\"type\":\"publish\",\"topic\":\"%s\",\"payload\":{\"n\":%d}}", topic, n);
  if (offset)
    expectf(fx, p, "{\"status\":\"published\",\"topic\":\"%s\",\"offset\":%llu}", topic,
            (unsigned long long)offset);
  else expectf(fx, p, "{\"status\":\"published\",\"topic\":\"%s\"}", topic);
}

/* Publishes n = from..to, whose offsets are the same numbers. */
static void publish_run(struct fx *fx, struct client *p, const char *topic, int from, int to) {
  for (int n = from; n <= to; n++) publish(fx, p, topic, n, (uint64_t)n);
}

/* The notification of {"n":n} at offset (0: without one).  The first
 * message of an epoch also names its epoch (whichever it is here). */
static void expect_note(struct fx *fx, struct client *cl, const char *topic, int n,
                        uint64_t offset) {
  if (offset == 1) {
    char want[256];
    snprintf(
        want, sizeof(want),
        "{\"type\":\"notification\",\"topic\":\"%s\",\"payload\":{\"n\":%d},\"offset\":1,\"epoch\":\"",
        topic, n);
    char *got = client_recv(fx, cl);
    size_t wl = strlen(want), gl = strlen(got);
    if (gl <= wl + 2 || strncmp(got, want, wl) != 0 || strcmp(got + gl - 2, "\"}") != 0)
      fail_msg("got %s, want %s<epoch>\"}", got, want);
    for (size_t i = wl; i < gl - 2; i++)
      if (!isalnum((unsigned char)got[i]) && got[i] != '-') fail_msg("bad epoch in %s", got);
    free(got);
  } else if (offset)
    expectf(fx, cl,
            "{\"type\":\"notification\",\"topic\":\"%s\",\"payload\":{\"n\":%d},\"offset\":%llu}",
            topic, n, (unsigned long long)offset);
  else
    expectf(fx, cl, "{\"type\":\"notification\",\"topic\":\"%s\",\"payload\":{\"n\":%d}}", topic,
            n);
}

/* Notifications of n = from..to at the same offsets, in order. */
static void expect_run(struct fx *fx, struct client *cl, const char *topic, int from, int to) {
  for (int n = from; n <= to; n++) expect_note(fx, cl, topic, n, (uint64_t)n);
}

/* A plain subscribe to a topic with history. */
static void subscribe(struct fx *fx, struct client *cl, const char *topic, const char *epoch,
                      uint64_t top) {
  sendf(cl, "{\"type\":\"subscribe\",\"topic\":\"%s\"}", topic);
  expectf(fx, cl, "{\"status\":\"subscribed\",\"topic\":\"%s\",\"epoch\":\"%s\",\"offset\":%llu}",
          topic, epoch, (unsigned long long)top);
}

static void send_resume(struct client *cl, const char *topic, const char *epoch, uint64_t since) {
  sendf(cl,
        "{\"type\":\"subscribe\",\"topic\":\"%s\",\"since\":{\"offset\":%llu,\"epoch\":\"%s\"}}",
        topic, (unsigned long long)since, epoch);
}

static void expect_resumed(struct fx *fx, struct client *cl, const char *topic, int recovered,
                           const char *epoch, uint64_t top) {
  expectf(fx, cl,
          "{\"status\":\"subscribed\",\"topic\":\"%s\",\"recovered\":%s,\"epoch\":\"%s\","
          "\"offset\":%llu}",
          topic, recovered ? "true" : "false", epoch, (unsigned long long)top);
}

/* Runs the loop until no history read waits (the holds released). */
static void settle_reads(struct fx *fx) {
  for (int i = 0; i < WAIT_MS && bus_local_history_waiting(fx->w->bus); i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(bus_local_history_waiting(fx->w->bus), 0);
}

/* Runs the loop until n reads wait for their answer. */
static void wait_reads(struct fx *fx, size_t n) {
  for (int i = 0; i < WAIT_MS && bus_local_history_waiting(fx->w->bus) < n; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(bus_local_history_waiting(fx->w->bus), n);
}

/* ---- offsets ---- */

/* Publishes on a topic with history are acknowledged with their offsets,
 * and every subscriber's notification carries the same. */
static void publish_carries_offsets(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0); /* nothing published yet: no epoch */
  subscribe(fx, b, "news", "", 0);
  for (int n = 1; n <= 3; n++) {
    publish(fx, p, "news", n, (uint64_t)n);
    expect_note(fx, a, "news", n, (uint64_t)n);
    expect_note(fx, b, "news", n, (uint64_t)n);
  }
  const char *epoch;
  assert_int_equal(bus_local_top(fx->w->bus, "news", &epoch), 3);
  assert_string_equal(epoch, EP);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* A topic outside --history-topics: no offset anywhere, no epoch in the
 * subscribe reply, no history read; one inside gets them. */
static void topic_outside_history_topics(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"plain\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"plain\"}");
  publish(fx, p, "plain", 1, 0);
  expect_note(fx, a, "plain", 1, 0);
  publish(fx, p, "plain", 2, 0);
  expect_note(fx, a, "plain", 2, 0);
  assert_int_equal(bus_local_history_reads(fx->w->bus), 0);
  assert_int_equal(bus_local_top(fx->w->bus, "plain", NULL), 0);

  subscribe(fx, a, "hx", "", 0);
  publish(fx, p, "hx", 1, 1);
  expect_note(fx, a, "hx", 1, 1);
  subscribe(fx, a, "keep", "", 0);
  publish(fx, p, "keep", 7, 1);
  expect_note(fx, a, "keep", 7, 1);
  /* "keep" is an exact name, not a prefix */
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"keeper\"}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"keeper\"}");
  publish(fx, p, "keeper", 1, 0);
  expect_note(fx, a, "keeper", 1, 0);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Without --history-size nothing has offsets, and resuming is not an error:
 * the subscribe is a plain one. */
static void no_history_at_all(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  send_resume(a, "news", EP, 3);
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"news\"}");
  publish(fx, p, "news", 1, 0);
  expect_note(fx, a, "news", 1, 0);
  client_send(a, "{\"type\":\"history\",\"topic\":\"news\",\"id\":1}");
  expect(fx, a,
         "{\"error\":\"This topic keeps no history\",\"code\":\"no_history\",\"topic\":\"news\","
         "\"id\":1}");
  assert_int_equal(bus_local_history_reads(fx->w->bus), 0);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* A plain subscribe answers with the epoch and the newest offset; what
 * follows goes on from there. */
static void plain_subscribe_has_epoch_and_offset(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 3);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"news\",\"id\":\"s1\"}");
  expect(fx, a,
         "{\"status\":\"subscribed\",\"topic\":\"news\",\"epoch\":\"" EP
         "\",\"offset\":3,"
         "\"id\":\"s1\"}");
  uint64_t since;
  size_t limit;
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(limit, 0); /* only the epoch and top were asked for */
  publish(fx, p, "news", 4, 4);
  expect_note(fx, a, "news", 4, 4);
  /* subscribing again tells where the topic stands, and replays nothing */
  size_t reads = bus_local_history_reads(fx->w->bus);
  subscribe(fx, a, "news", EP, 4);
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads + 1);
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(limit, 0);
  send_resume(a, "news", EP, 2);
  expect_resumed(fx, a, "news", 1, EP, 4);
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(limit, 0);
  send_resume(a, "news", "other-1", 2);
  expect_resumed(fx, a, "news", 0, EP, 4);
  fence(fx, a);
  publish(fx, p, "news", 5, 5);
  expect_note(fx, a, "news", 5, 5);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Subscribing again while the first subscribe's answer is still out: a
 * plain reply at once, then the first one's; the held frames go out once. */
static void subscribe_again_during_the_first(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 3, 3);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"news\",\"id\":2}");
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"news\",\"id\":2}");
  assert_int_equal(bus_local_history_waiting(fx->w->bus), 1);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 3);
  expect_run(fx, a, "news", 2, 3);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* ---- resuming ---- */

/* recovered:true sends exactly (since, top], then the live messages. */
static void resume_sends_exactly_the_missed(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 6);
  send_resume(a, "news", EP, 2);
  expect_resumed(fx, a, "news", 1, EP, 6);
  expect_run(fx, a, "news", 3, 6);
  uint64_t since;
  size_t limit;
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(since, 2);
  assert_int_equal(limit, 50);
  publish(fx, p, "news", 7, 7);
  expect_note(fx, a, "news", 7, 7);
  fence(fx, a);

  /* up to date: recovered with nothing to send */
  struct client *b = client_open(fx);
  send_resume(b, "news", EP, 7);
  expect_resumed(fx, b, "news", 1, EP, 7);
  fence(fx, b);
  /* offset 0 (nothing received yet) while everything is held: all of it */
  struct client *c = client_open(fx);
  send_resume(c, "news", EP, 0);
  expect_resumed(fx, c, "news", 1, EP, 7);
  expect_run(fx, c, "news", 1, 7);
  fence(fx, c);
  publish(fx, p, "news", 8, 8);
  expect_note(fx, a, "news", 8, 8);
  expect_note(fx, b, "news", 8, 8);
  expect_note(fx, c, "news", 8, 8);
  fence(fx, a);
  client_close(a);
  client_close(b);
  client_close(c);
  client_close(p);
}

/* The seam: live messages published while the resume's read is out.  The
 * read's answer is taken when it is answered (Redis ran it late): it holds
 * all of them, and the live copies held meanwhile must not go out again. */
static void seam_answer_covers_the_live(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 4);
  expect_run(fx, b, "news", 1, 4);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 2);
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 5, 9);
  expect_run(fx, b, "news", 5, 9); /* the others are not held up */
  /* a plain PUBLISH from outside has no offset: it is never filtered */
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "{\"n\":0}", 0), 0);
  expect_note(fx, b, "news", 0, 0);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 9);
  expect_run(fx, a, "news", 3, 9);
  expect_note(fx, a, "news", 0, 0);
  fence(fx, a);
  publish(fx, p, "news", 10, 10);
  expect_note(fx, a, "news", 10, 10);
  expect_note(fx, b, "news", 10, 10);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* The seam, the answer taken in the middle: it holds 5 and 6, the held live
 * frames are 5..9; 7..9 go out after the history, once each. */
static void seam_answer_in_the_middle(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 4);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 2);
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 5, 6);
  bus_local_snapshot_history(fx->w->bus); /* Redis runs the read now */
  publish_run(fx, p, "news", 7, 9);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 6);
  expect_run(fx, a, "news", 3, 9);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* The seam, the answer taken before any live message: all five held live
 * frames follow the history. */
static void seam_answer_before_the_live(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 4);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 2);
  wait_reads(fx, 1);
  bus_local_snapshot_history(fx->w->bus);
  publish_run(fx, p, "news", 5, 9);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 4);
  expect_run(fx, a, "news", 3, 9);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* A plain subscribe has a seam too: what was published while its read was
 * out comes once, past the offset of the reply. */
static void seam_of_a_plain_subscribe(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"news\"}");
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 3, 4);
  bus_local_snapshot_history(fx->w->bus);
  publish_run(fx, p, "news", 5, 6);
  bus_local_hold_history(fx->w->bus, 0);
  expect(fx, a, "{\"status\":\"subscribed\",\"topic\":\"news\",\"epoch\":\"" EP "\",\"offset\":4}");
  expect_run(fx, a, "news", 5, 6);
  fence(fx, a);
  expect_run(fx, b, "news", 3, 6);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* recovered:false, with the epoch and offset to go on from, and no history
 * sent: another epoch, an offset already trimmed, an offset beyond top. */
static void resume_not_recovered(void **state) {
  struct fx *fx = *state;
  struct client *p = client_open(fx);
  publish_run(fx, p, "news", 1, 60); /* 50 kept: 11..60 */

  struct client *a = client_open(fx);
  send_resume(a, "news", "other-1", 58);
  expect_resumed(fx, a, "news", 0, EP, 60);
  fence(fx, a);

  struct client *b = client_open(fx);
  send_resume(b, "news", EP, 9); /* 10 is gone */
  expect_resumed(fx, b, "news", 0, EP, 60);
  fence(fx, b);

  struct client *c = client_open(fx);
  send_resume(c, "news", EP, 61); /* beyond what was ever published */
  expect_resumed(fx, c, "news", 0, EP, 60);
  fence(fx, c);

  struct client *d = client_open(fx);
  send_resume(d, "news", EP, 0); /* all of it, but 1..10 are gone */
  expect_resumed(fx, d, "news", 0, EP, 60);
  fence(fx, d);

  /* the edge: the oldest held is the next one needed */
  struct client *e = client_open(fx);
  send_resume(e, "news", EP, 10);
  expect_resumed(fx, e, "news", 1, EP, 60);
  expect_run(fx, e, "news", 11, 60);
  fence(fx, e);

  /* all of them go on with the live messages */
  publish(fx, p, "news", 61, 61);
  struct client *all[] = {a, b, c, d, e};
  for (int i = 0; i < 5; i++) {
    expect_note(fx, all[i], "news", 61, 61);
    fence(fx, all[i]);
    client_close(all[i]);
  }
  client_close(p);
}

/* A resume of a topic that never had a message here: no epoch to match. */
static void resume_of_an_empty_topic(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  send_resume(a, "fresh", EP, 0);
  expect_resumed(fx, a, "fresh", 0, "", 0);
  publish(fx, p, "fresh", 1, 1);
  expect_note(fx, a, "fresh", 1, 1);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* ---- catching up ---- */

/* Deliveries lost on the way (a gap): filled from the history before the
 * newer messages, which wait meanwhile; no one gets anything twice. */
static void gap_is_filled_from_history(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, a, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  size_t reads = bus_local_history_reads(fx->w->bus);

  bus_local_drop(fx->w->bus, "news", 2);
  bus_local_hold_history(fx->w->bus, 1);
  publish_run(fx, p, "news", 3, 7); /* 3 and 4 lost; 5 starts the catch-up */
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads + 1);
  uint64_t since;
  size_t limit;
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(since, 2);
  assert_int_equal(limit, 2);
  /* 5..7 wait for 3 and 4 */
  fence(fx, a);
  fence(fx, b);
  bus_local_hold_history(fx->w->bus, 0);
  expect_run(fx, a, "news", 3, 7);
  expect_run(fx, b, "news", 3, 7);
  publish(fx, p, "news", 8, 8);
  expect_note(fx, a, "news", 8, 8);
  expect_note(fx, b, "news", 8, 8);
  fence(fx, a);
  fence(fx, b);
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads + 1);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* The topic's first subscriber here learns where the topic stands from its
 * subscribe answer: a message lost right after it is a gap, filled. */
static void gap_right_after_the_first_subscribe(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 3);
  subscribe(fx, a, "news", EP, 3);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 4, 5);
  expect_run(fx, a, "news", 4, 5);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* A second gap while the first is being filled: one read at a time, then
 * the next, in order. */
static void two_gaps_in_a_row(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 2, 3); /* 2 lost: a read for it */
  bus_local_snapshot_history(fx->w->bus);
  bus_local_drop(fx->w->bus, "news", 2);
  publish_run(fx, p, "news", 4, 6); /* 4, 5 lost */
  assert_int_equal(bus_local_history_waiting(fx->w->bus), 1);
  bus_local_hold_history(fx->w->bus, 0);
  expect_run(fx, a, "news", 2, 6);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* The gap cannot be filled (the history lost it): delivered with the gap. */
static void gap_that_history_cannot_fill(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 2, 4);
  /* the read is answered after the history was lost and started over */
  assert_int_equal(bus_local_new_epoch(fx->w->bus, "news", "local-2"), 0);
  bus_local_snapshot_history(fx->w->bus);
  bus_local_hold_history(fx->w->bus, 0);
  expect_run(fx, a, "news", 3, 4);
  fence(fx, a);
  /* the bus cannot read at all: delivered at once, with the gap */
  size_t reads = bus_local_history_reads(fx->w->bus);
  bus_local_set_ready(fx->w->bus, 0);
  bus_local_drop(fx->w->bus, "news", 1);
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "{\"n\":1}", 1), 1);
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "{\"n\":2}", 1), 2);
  expect_note(fx, a, "news", 2, 2);
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads);
  bus_local_set_ready(fx->w->bus, 1);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Too much arrives while a gap is being filled: the worker stops waiting
 * and delivers what it holds, in order, with the gap; the read's late
 * answer adds nothing. */
static void catchup_overflow_gives_up(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  enum { N = 10001 + 2 }; /* 10000 wait; the one after overflows */
  char msg[32];
  for (int n = 2; n <= N; n++) {
    snprintf(msg, sizeof(msg), "{\"n\":%d}", n);
    assert_int_equal(bus_local_inject(fx->w->bus, "news", msg, 1), n);
  }
  assert_int_equal(bus_local_history_waiting(fx->w->bus), 1);
  for (int n = 3; n <= N; n++) expect_note(fx, a, "news", n, (uint64_t)n);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  fence(fx, a);
  publish(fx, p, "news", N + 1, N + 1);
  expect_note(fx, a, "news", N + 1, N + 1);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* A resume whose read went out before the topic noticed a gap: the resume
 * is answered first (reads are answered in order) and covers the gap; the
 * catch-up's messages and the live ones it held back must not reach the
 * resumed client a second time.  Nor a plain subscriber whose reply's
 * offset covers them. */
static void resume_before_a_catchup(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *c = client_open(fx),
                *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 0);
  client_send(c, "{\"type\":\"subscribe\",\"topic\":\"news\"}");
  wait_reads(fx, 2);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 3, 4); /* 3 lost: a catch-up, after the two reads */
  wait_reads(fx, 3);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 4);
  expect_run(fx, a, "news", 1, 4);
  expect(fx, c, "{\"status\":\"subscribed\",\"topic\":\"news\",\"epoch\":\"" EP "\",\"offset\":4}");
  expect_run(fx, b, "news", 3, 4);
  fence(fx, a);
  fence(fx, c);
  fence(fx, b);
  publish(fx, p, "news", 5, 5);
  expect_note(fx, a, "news", 5, 5);
  expect_note(fx, b, "news", 5, 5);
  expect_note(fx, c, "news", 5, 5);
  fence(fx, a);
  client_close(a);
  client_close(b);
  client_close(c);
  client_close(p);
}

/* The gap came first, then a resume: the catch-up is answered first, its
 * messages reach the resuming client as held frames, which its own answer
 * then covers. */
static void resume_after_a_catchup(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 3, 4); /* 3 lost: the catch-up goes out */
  wait_reads(fx, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 2);
  publish_run(fx, p, "news", 5, 5);
  bus_local_release_history(fx->w->bus, 1); /* the catch-up only */
  expect_run(fx, b, "news", 3, 5);
  fence(fx, a); /* a waits for its own answer */
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 5);
  expect_run(fx, a, "news", 2, 5);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* The topic's last subscriber leaves while its catch-up read is out: the
 * answer finds no one; a new subscriber meanwhile starts afresh. */
static void topic_gone_during_catchup(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 2, 4); /* 3 and 4 wait for 2 */
  wait_reads(fx, 1);
  client_send(a, "{\"type\":\"unsubscribe\",\"topic\":\"news\"}");
  expect(fx, a, "{\"status\":\"unsubscribed\",\"topic\":\"news\"}");
  assert_int_equal(fx->w->topics.ntopics, 0);
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"news\"}");
  wait_reads(fx, 2);
  bus_local_hold_history(fx->w->bus, 0);
  expectf(fx, a, "{\"status\":\"subscribed\",\"topic\":\"news\",\"epoch\":\"%s\",\"offset\":4}",
          EP);
  fence(fx, a); /* nothing of the old catch-up */
  publish(fx, p, "news", 5, 5);
  expect_note(fx, a, "news", 5, 5);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* History reads that fail: a subscribe is refused (and can be made
 * again), a request gets an error, a catch-up delivers with the gap. */
static void history_reads_that_fail(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 3);
  expect_run(fx, b, "news", 1, 3);
  bus_local_fail_history(fx->w->bus, 1);
  sendf(a,
        "{\"type\":\"subscribe\",\"topic\":\"news\",\"since\":{\"offset\":1,\"epoch\":\"%s\"},"
        "\"id\":1}",
        EP);
  expect(
      fx, a,
      "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
      "\"topic\":\"news\",\"id\":1}");
  publish_run(fx, p, "news", 4, 4);
  expect_run(fx, b, "news", 4, 4);
  fence(fx, a); /* not subscribed */
  client_send(a, "{\"type\":\"unsubscribe\",\"topic\":\"news\"}");
  expect(
      fx, a,
      "{\"error\":\"Not subscribed to this topic\",\"code\":\"not_subscribed\",\"topic\":\"news\"}");
  send_resume(a, "news", EP, 2);
  expect_resumed(fx, a, "news", 1, EP, 4);
  expect_run(fx, a, "news", 3, 4);

  bus_local_fail_history(fx->w->bus, 1);
  client_send(a, "{\"type\":\"history\",\"topic\":\"news\",\"id\":2}");
  expect(
      fx, a,
      "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
      "\"topic\":\"news\",\"id\":2}");

  bus_local_fail_history(fx->w->bus, 1);
  bus_local_drop(fx->w->bus, "news", 1);
  /* 5 lost, and the catch-up read fails: 6 waits, the worker's tick reads
   * again, and both arrive in order */
  publish_run(fx, p, "news", 5, 6);
  expect_run(fx, a, "news", 5, 6);
  expect_run(fx, b, "news", 5, 6);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* A delivery that comes again (a duplicate) is dropped; so is an older one. */
static void duplicate_is_dropped(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 3);
  expect_run(fx, a, "news", 1, 3);
  assert_int_equal(bus_local_redeliver(fx->w->bus, "news", 3), 0);
  assert_int_equal(bus_local_redeliver(fx->w->bus, "news", 1), 0);
  fence(fx, a);
  publish(fx, p, "news", 4, 4);
  expect_note(fx, a, "news", 4, 4);
  assert_int_equal(bus_local_redeliver(fx->w->bus, "news", 4), 0);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* The history is lost mid-stream: offsets start over in a new epoch, and
 * the worker goes on with them, without a catch-up across epochs. */
static void epoch_change_resets(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 3);
  expect_run(fx, a, "news", 1, 3);
  size_t reads = bus_local_history_reads(fx->w->bus);
  assert_int_equal(bus_local_new_epoch(fx->w->bus, "news", "local-2"), 0);
  publish(fx, p, "news", 10, 1);
  expect_note(fx, a, "news", 10, 1);
  publish(fx, p, "news", 11, 2);
  expect_note(fx, a, "news", 11, 2);
  /* the first message of the next epoch is lost: 2 is not a gap after 3 */
  assert_int_equal(bus_local_new_epoch(fx->w->bus, "news", "local-3"), 0);
  bus_local_drop(fx->w->bus, "news", 1);
  publish(fx, p, "news", 20, 1);
  publish(fx, p, "news", 21, 2);
  expect_note(fx, a, "news", 21, 2);
  publish(fx, p, "news", 22, 3);
  expect_note(fx, a, "news", 22, 3);
  fence(fx, a);
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads);
  /* a client of the old epoch is told it cannot be recovered */
  struct client *b = client_open(fx);
  send_resume(b, "news", "local-2", 2);
  expect_resumed(fx, b, "news", 0, "local-3", 3);
  fence(fx, b);
  /* offsets within the new epoch are checked again: a gap is filled */
  bus_local_drop(fx->w->bus, "news", 1);
  publish(fx, p, "news", 23, 4);
  publish(fx, p, "news", 24, 5);
  expect_note(fx, a, "news", 23, 4);
  expect_note(fx, a, "news", 24, 5);
  expect_note(fx, b, "news", 23, 4);
  expect_note(fx, b, "news", 24, 5);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* A new epoch while a resume's read is out: the live messages of the new
 * epoch that were held meanwhile must reach the client even though their
 * offsets are below those of the old epoch the answer speaks of. */
static void epoch_change_at_the_seam(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 5);
  expect_run(fx, b, "news", 1, 5);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 3);
  wait_reads(fx, 1);
  bus_local_snapshot_history(fx->w->bus); /* 4, 5 of the first epoch */
  assert_int_equal(bus_local_new_epoch(fx->w->bus, "news", "local-2"), 0);
  publish(fx, p, "news", 10, 1);
  publish(fx, p, "news", 11, 2);
  expect_note(fx, b, "news", 10, 1);
  expect_note(fx, b, "news", 11, 2);
  bus_local_hold_history(fx->w->bus, 0);
  expect_resumed(fx, a, "news", 1, EP, 5);
  expect_run(fx, a, "news", 4, 5);
  expect_note(fx, a, "news", 10, 1);
  expect_note(fx, a, "news", 11, 2);
  fence(fx, a);
  publish(fx, p, "news", 12, 3);
  expect_note(fx, a, "news", 12, 3);
  expect_note(fx, b, "news", 12, 3);
  fence(fx, a);
  fence(fx, b);
  client_close(a);
  client_close(b);
  client_close(p);
}

/* After the bus re-subscribed, each topic catches up what it missed while
 * its deliveries were cut. */
static void resynced_catches_up(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  subscribe(fx, a, "other", "", 0);
  subscribe(fx, a, "idle", "", 0); /* no message yet: nothing to catch up */
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, a, "news", 1, 2);
  publish_run(fx, p, "other", 1, 1);
  expect_run(fx, a, "other", 1, 1);
  bus_local_drop(fx->w->bus, "news", 3);
  publish_run(fx, p, "news", 3, 5); /* the subscription was down */
  fence(fx, a);
  size_t reads = bus_local_history_reads(fx->w->bus);
  bus_local_resynced(fx->w->bus);
  /* one read for each topic that had messages */
  assert_int_equal(bus_local_history_reads(fx->w->bus), reads + 2);
  expect_run(fx, a, "news", 3, 5);
  fence(fx, a);
  publish(fx, p, "news", 6, 6);
  expect_note(fx, a, "news", 6, 6);
  publish(fx, p, "other", 2, 2);
  expect_note(fx, a, "other", 2, 2);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Live messages that arrive while the resync's read is out wait for it. */
static void resynced_with_live_meanwhile(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  bus_local_drop(fx->w->bus, "news", 2);
  publish_run(fx, p, "news", 2, 3);
  bus_local_hold_history(fx->w->bus, 1);
  bus_local_resynced(fx->w->bus);
  publish_run(fx, p, "news", 4, 5);
  fence(fx, a); /* 4 and 5 wait */
  bus_local_hold_history(fx->w->bus, 0);
  expect_run(fx, a, "news", 2, 5);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Messages from outside: a plain PUBLISH has no offset and does not count;
 * one through tidings_publish has the next offset. */
static void messages_from_outside(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  subscribe(fx, a, "news", "", 0);
  publish_run(fx, p, "news", 1, 1);
  expect_run(fx, a, "news", 1, 1);
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "{\"n\":100}", 0), 0);
  expect_note(fx, a, "news", 100, 0);
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "not json", 0), 0);
  expect(fx, a, "{\"type\":\"notification\",\"topic\":\"news\",\"payload\":\"not json\"}");
  assert_int_equal(bus_local_inject(fx->w->bus, "news", "{\"n\":2}", 1), 2);
  expect_note(fx, a, "news", 2, 2);
  publish(fx, p, "news", 3, 3);
  expect_note(fx, a, "news", 3, 3);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* ---- going away with reads out ---- */

/* A client leaves (its socket closes) while its resume read is out, with
 * live frames held for it: freed without a leak when the answer comes;
 * the others go on. */
static void client_gone_during_resume(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 3, 4); /* held for a */
  expect_run(fx, b, "news", 3, 4);
  client_close(a);
  for (int i = 0; i < WAIT_MS && fx->w->open.count > 2; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->open.count, 2);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  publish(fx, p, "news", 5, 5);
  expect_note(fx, b, "news", 5, 5);
  fence(fx, b);
  client_close(b);
  client_close(p);
}

/* A client sends its close frame while its resume read is out: the server
 * answers it and closes at once, the subscription goes with the
 * connection, and the answer that comes later finds no one. */
static void client_closing_during_resume(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  client_frame(a, 0x8, "\x03\xe8", 2); /* close 1000 */
  /* the server's close frame: 0x88, then length 2 and 1000 */
  while (a->len < 4) assert_true(fill(fx, a));
  assert_memory_equal(a->buf, "\x88\x02\x03\xe8", 4);
  for (int i = 0; i < WAIT_MS && fx->w->topics.ntopics; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->topics.ntopics, 0);
  assert_int_equal(bus_local_history_waiting(fx->w->bus), 1);
  publish_run(fx, p, "news", 3, 3);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  publish_run(fx, p, "news", 4, 4);
  client_close(a);
  for (int i = 0; i < WAIT_MS && fx->w->nconns > 1; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->nconns, 1);
  client_close(p);
}

/* The server closes a client (here for a binary message) while its resume
 * read is out: the connection waits in the close handshake for the
 * client's close, still subscribed, when the answer comes; then it goes. */
static void client_failed_during_resume(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  client_frame(a, 0x2, "x", 1);
  while (a->len < 4) assert_true(fill(fx, a));
  assert_memory_equal(a->buf, "\x88", 1);
  assert_memory_equal(a->buf + 2, "\x03\xeb", 2); /* 1003 */
  publish_run(fx, p, "news", 3, 3);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  publish_run(fx, p, "news", 4, 4);
  assert_int_equal(fx->w->topics.ntopics, 1); /* still subscribed, lingering */
  client_frame(a, 0x8, "\x03\xe8", 2);        /* the client's close: the end */
  for (int i = 0; i < WAIT_MS && fx->w->nconns > 1; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->nconns, 1);
  assert_int_equal(fx->w->topics.ntopics, 0);
  client_close(a);
  client_close(p);
}

/* The worker drains (SIGTERM) while a resume read is out: the client is
 * closed with 1001, the answer finds it closing, and it goes when the
 * client answers the close. */
static void shutdown_during_resume(void **state) {
  struct fx *fx = *state;
  struct client *p = client_open(fx);
  publish_run(fx, p, "news", 1, 2);
  client_close(p);
  struct client *a = client_open(fx);
  for (int i = 0; i < WAIT_MS && fx->w->nconns > 1; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  worker_shutdown(fx->w, 1001);
  while (a->len < 4) assert_true(fill(fx, a));
  assert_memory_equal(a->buf, "\x88", 1);
  assert_memory_equal(a->buf + 2, "\x03\xe9", 2); /* 1001 */
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  assert_int_equal(fx->w->topics.ntopics, 1); /* still subscribed, closing */
  client_frame(a, 0x8, "\x03\xe9", 2);
  for (int i = 0; i < WAIT_MS && fx->w->nconns > 0; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->nconns, 0);
  assert_int_equal(fx->w->topics.ntopics, 0);
  client_close(a);
}

/* A client unsubscribes while its resume read is out: no subscribed reply
 * later, nothing of the topic. */
static void unsubscribe_during_resume(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 3);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  publish_run(fx, p, "news", 4, 4);
  client_send(a, "{\"type\":\"unsubscribe\",\"topic\":\"news\"}");
  expect(fx, a, "{\"status\":\"unsubscribed\",\"topic\":\"news\"}");
  assert_int_equal(fx->w->topics.ntopics, 0);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  publish_run(fx, p, "news", 5, 5);
  fence(fx, a);
  /* subscribing again works as before */
  send_resume(a, "news", EP, 3);
  expect_resumed(fx, a, "news", 1, EP, 5);
  expect_run(fx, a, "news", 4, 5);
  fence(fx, a);
  client_close(a);
  client_close(p);
}

/* Too much arrives for a resuming subscription while its read is out: the
 * client is closed (1013), nothing leaks. */
static void resume_overflow_closes(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 1);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);
  wait_reads(fx, 1);
  for (int n = 2; n <= 200; n++) publish(fx, p, "news", n, (uint64_t)n); /* ~ 60 B each */
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  while (a->len < 4) assert_true(fill(fx, a));
  assert_memory_equal(a->buf, "\x88", 1);
  assert_memory_equal(a->buf + 2, "\x03\xf5", 2); /* 1013 */
  client_close(a);
  client_close(p);
}

/* The worker stops with reads of every kind outstanding. */
static void stop_with_reads_outstanding(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *b = client_open(fx), *p = client_open(fx);
  subscribe(fx, b, "news", "", 0);
  publish_run(fx, p, "news", 1, 2);
  expect_run(fx, b, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  send_resume(a, "news", EP, 1);                                        /* a resume */
  client_send(b, "{\"type\":\"history\",\"topic\":\"news\",\"id\":1}"); /* a request */
  bus_local_drop(fx->w->bus, "news", 1);
  publish_run(fx, p, "news", 3, 4); /* a catch-up, 4 held */
  wait_reads(fx, 3);
  client_close(a);
  client_close(b);
  client_close(p);
  /* teardown frees the worker now */
}

/* ---- history requests ---- */

static void history_request(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"id\":1}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"\",\"offset\":0,\"messages\":[],"
         "\"id\":1}");
  publish_run(fx, p, "hnews", 1, 6);
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":2,\"limit\":3,\"id\":2}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":["
         "{\"offset\":3,\"payload\":{\"n\":3}},{\"offset\":4,\"payload\":{\"n\":4}},"
         "{\"offset\":5,\"payload\":{\"n\":5}}],\"id\":2}");
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":5}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":["
         "{\"offset\":6,\"payload\":{\"n\":6}}]}");
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":6}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":[]}");
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":600}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":[]}");
  /* the request's own limit goes to the bus; the default is 100 */
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":1}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":["
         "{\"offset\":1,\"payload\":{\"n\":1}}]}");
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":4}");
  turns(fx, 5);
  uint64_t since;
  size_t limit;
  bus_local_last_read(fx->w->bus, &since, &limit);
  assert_int_equal(since, 4);
  assert_int_equal(limit, 100);
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":6,\"messages\":["
         "{\"offset\":5,\"payload\":{\"n\":5}},{\"offset\":6,\"payload\":{\"n\":6}}]}");
  /* a payload from outside that is not JSON comes as a string */
  assert_int_equal(bus_local_inject(fx->w->bus, "hnews", "raw", 1), 7);
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":6}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"" EP
         "\",\"offset\":7,\"messages\":["
         "{\"offset\":7,\"payload\":\"raw\"}]}");
  fence(fx, a);
  client_close(a);
  client_close(p);
}

static void history_request_errors(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx);
  client_send(a, "{\"type\":\"history\",\"topic\":\"plain\",\"id\":1}");
  expect(fx, a,
         "{\"error\":\"This topic keeps no history\",\"code\":\"no_history\",\"topic\":\"plain\","
         "\"id\":1}");
  static const char *bad[] = {
      "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":0,\"id\":2}",
      "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":101,\"id\":2}",
      "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":-1,\"id\":2}",
      "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":-1,\"id\":2}",
      "{\"type\":\"history\",\"topic\":\"hnews\",\"since\":\"1\",\"id\":2}",
      "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":1.5,\"id\":2}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    client_send(a, bad[i]);
    expect(fx, a,
           "{\"error\":\"Invalid message format\",\"code\":\"invalid_format\",\"topic\":\"hnews\","
           "\"id\":2}");
  }
  client_send(a, "{\"type\":\"history\",\"topic\":\"bad topic\",\"id\":3}");
  expect(fx, a,
         "{\"error\":\"Invalid topic name\",\"code\":\"invalid_topic\",\"topic\":\"bad topic\","
         "\"id\":3}");
  /* the largest limit is fine */
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"limit\":100,\"id\":4}");
  expect(fx, a,
         "{\"type\":\"history\",\"topic\":\"hnews\",\"epoch\":\"\",\"offset\":0,\"messages\":[],"
         "\"id\":4}");
  assert_int_equal(bus_local_history_reads(fx->w->bus), 1);
  /* the bus is down: requests and resumes are refused at once */
  bus_local_set_ready(fx->w->bus, 0);
  client_send(a, "{\"type\":\"history\",\"topic\":\"hnews\",\"id\":5}");
  expect(
      fx, a,
      "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
      "\"topic\":\"hnews\",\"id\":5}");
  client_send(a, "{\"type\":\"subscribe\",\"topic\":\"hnews\",\"id\":6}");
  expect(
      fx, a,
      "{\"error\":\"Message bus unavailable, message not published\",\"code\":\"bus_unavailable\","
      "\"topic\":\"hnews\",\"id\":6}");
  assert_int_equal(fx->w->topics.ntopics, 0); /* the refused subscription is gone */
  bus_local_set_ready(fx->w->bus, 1);
  subscribe(fx, a, "hnews", "", 0);
  fence(fx, a);
  client_close(a);
}

/* A request whose client leaves before the answer. */
static void history_request_client_gone(void **state) {
  struct fx *fx = *state;
  struct client *a = client_open(fx), *p = client_open(fx);
  publish_run(fx, p, "news", 1, 2);
  bus_local_hold_history(fx->w->bus, 1);
  client_send(a, "{\"type\":\"history\",\"topic\":\"news\"}");
  wait_reads(fx, 1);
  client_close(a);
  for (int i = 0; i < WAIT_MS && fx->w->open.count > 1; i++) {
    uv_run(fx->w->loop, UV_RUN_NOWAIT);
    poll(NULL, 0, 1);
  }
  assert_int_equal(fx->w->open.count, 1);
  bus_local_hold_history(fx->w->bus, 0);
  settle_reads(fx);
  fence(fx, p);
  client_close(p);
}

#define T(f, s) cmocka_unit_test_setup_teardown(f, s, wtest_teardown)

/* An argument runs only the tests whose names match it (cmocka's pattern:
 * * and ?), e.g. test_recovery 'seam_*'. */
int main(int argc, char **argv) {
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      T(publish_carries_offsets, setup_hist),
      T(topic_outside_history_topics, setup_hist_topics),
      T(no_history_at_all, setup_no_hist),
      T(plain_subscribe_has_epoch_and_offset, setup_hist),
      T(subscribe_again_during_the_first, setup_hist),
      T(resume_sends_exactly_the_missed, setup_hist),
      T(seam_answer_covers_the_live, setup_hist),
      T(seam_answer_in_the_middle, setup_hist),
      T(seam_answer_before_the_live, setup_hist),
      T(seam_of_a_plain_subscribe, setup_hist),
      T(resume_not_recovered, setup_hist),
      T(resume_of_an_empty_topic, setup_hist),
      T(gap_is_filled_from_history, setup_hist),
      T(gap_right_after_the_first_subscribe, setup_hist),
      T(two_gaps_in_a_row, setup_hist),
      T(gap_that_history_cannot_fill, setup_hist),
      T(catchup_overflow_gives_up, setup_big_queue),
      T(resume_before_a_catchup, setup_hist),
      T(resume_after_a_catchup, setup_hist),
      T(topic_gone_during_catchup, setup_hist),
      T(history_reads_that_fail, setup_hist),
      T(duplicate_is_dropped, setup_hist),
      T(epoch_change_resets, setup_hist),
      T(epoch_change_at_the_seam, setup_hist),
      T(resynced_catches_up, setup_hist),
      T(resynced_with_live_meanwhile, setup_hist),
      T(messages_from_outside, setup_hist),
      T(client_gone_during_resume, setup_hist),
      T(client_closing_during_resume, setup_hist),
      T(client_failed_during_resume, setup_hist),
      T(shutdown_during_resume, setup_hist),
      T(unsubscribe_during_resume, setup_hist),
      T(resume_overflow_closes, setup_small_queue),
      T(stop_with_reads_outstanding, setup_hist),
      T(history_request, setup_hist_topics),
      T(history_request_errors, setup_hist_topics),
      T(history_request_client_gone, setup_hist),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
