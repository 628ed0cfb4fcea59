/* recovery.h - offsets, resumable subscriptions, and catching up from a
 * topic's history (a topic keeps history when --history-size is set and its
 * name matches --history-topics).
 *
 * Topic level.  For each topic with history and local subscribers the
 * worker remembers the epoch and the last offset it delivered (t->ext).  A
 * message whose offset is one more is delivered; one at or below it is a
 * duplicate and dropped; one further ahead means messages were missed here
 * (a Redis output-buffer cut, a blip): they are read from the history and
 * delivered first, newer live messages waiting meanwhile.  After the bus
 * re-subscribes (recovery_resynced) every such topic catches up the same way.
 *
 * Subscription level.  A subscribe to a topic with history answers with the
 * topic's epoch and newest offset; with "since" it first sends every message
 * after the client's offset (or says recovered:false when the history
 * cannot: another epoch, or trimmed).  Until the history read is answered
 * the subscription holds the live frames it is sent (s->ext), and then
 * releases those past the offset it answered with: no gap and no duplicate
 * at the seam.
 *
 * Everything runs on the worker's loop.  A pending read holds a reference
 * on its connection; a subscription or topic that goes away before the
 * answer detaches from its read, which then only frees itself.
 */
#ifndef TIDINGS_RECOVERY_H
#define TIDINGS_RECOVERY_H

#include <stddef.h>
#include <stdint.h>

struct bus_history;
struct bus_pos;
struct conn;
struct proto_since;
struct sbuf;
struct sub;
struct topic;
struct worker;

/* 1 when the worker keeps history for the topic. */
int recovery_keeps(const struct worker *w, const char *topic, size_t tlen);

/* The topic got its first subscriber / lost its last (topics' on_first and
 * on_last): sets up or releases t->ext.  Returns 0 or -1 (memory: the topic
 * is then delivered without offset tracking). */
int recovery_topic_start(struct worker *w, struct topic *t);
void recovery_topic_end(struct topic *t);

/* A message from the bus (pos NULL: no place in a history). */
void recovery_deliver(struct worker *w, const char *topic, size_t tlen, const char *payload,
                      size_t plen, int is_json, const struct bus_pos *pos);

/* The bus re-subscribed after an interruption: catch up every topic. */
void recovery_resynced(struct worker *w);

/* Once a tick: tries again the catch-ups the bus could not answer (their
 * topics' live messages wait meanwhile, up to a bound). */
void recovery_tick(struct worker *w);

/* After a subscribe of c to a topic with history (s is its subscription):
 * reads the history and answers later.  A new subscription holds its live
 * frames until then and, with since, is sent what it missed; an existing
 * one (existing set: the client subscribed again) only gets the reply with
 * the epoch and offset.  Returns PROTO_PENDING, PROTO_OK (an existing
 * subscription whose first answer is still coming: the caller replies) or
 * a negative enum proto_err (the caller answers, and removes a new
 * subscription). */
int recovery_subscribe(struct conn *c, struct sub *s, const struct proto_since *since,
                       const char *id_json, int existing);

/* broadcast(): a frame for a subscription that waits for its history. */
void recovery_hold(struct sub *s, struct sbuf *f, uint64_t offset);

/* A subscription with s->ext set is going away (topics' on_sub_gone). */
void recovery_sub_gone(struct sub *s);

/* {"type":"history",...}: PROTO_PENDING or a negative enum proto_err. */
int recovery_query(struct conn *c, const char *topic, size_t tlen, unsigned long long since,
                   unsigned limit, const char *id_json);

/* The JSON of a history answer, for a client or the HTTP API:
 * {"type":"history","topic":T,"epoch":E,"offset":TOP,"messages":[{"offset":N,"payload":P},...]}
 * with ,"id":ID when id_json is set.  Payloads that are not JSON (an
 * outside FCALL) become strings, as in notifications.  Returns a malloc'd
 * buffer (the caller frees it) with its length in *len, or NULL (memory). */
char *recovery_history_json(const char *topic, size_t tlen, const struct bus_history *h,
                            const char *id_json, size_t *len);

#endif
