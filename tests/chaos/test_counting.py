"""The chaos harness's counting, on made-up deliveries: each kind of fault
the harness claims to see is shown to it once, so that a clean table means
something.  No server is started; runs in well under a second.

    /usr/bin/python3 -m pytest -q tests/chaos/test_counting.py
"""
import asyncio
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import chaos  # noqa: E402

T = "chaos.t00"
EPOCH = "e1"


def make_run(acked, topics=(T,)):
    """A scenario with one publisher `P` whose acknowledged messages are
    `acked`: [(topic, offset, seq)], and one subscriber of `topics`."""
    run = chaos.ScenarioRun("test")
    pub = SimpleNamespace(acked=[(t, off, "P", seq) for t, off, seq in acked], errors={},
                          unknown=0, problems=[], name="P")
    run.pubs.append(pub)
    sub = chaos.Subscriber(run, 0, SimpleNamespace(name="host1"), "ws://x/", list(topics), False)
    run.subs.append(sub)
    return run, sub


def feed(sub, *msgs):
    """Hands the subscriber the server's messages, as its read loop does."""
    for m in msgs:
        if m.get("type") == "notification":
            sub.on_notification(m)
        else:
            sub.on_subscribed(m)


def subscribed(offset, epoch=EPOCH, topic=T, **kw):
    return {"status": "subscribed", "topic": topic, "epoch": epoch, "offset": offset, **kw}


def note(seq, offset=None, topic=T, pub="P"):
    m = {"type": "notification", "topic": topic, "payload": {"p": pub, "s": seq}}
    if offset is not None:
        m["offset"] = offset
    return m


def row_of(run):
    row = chaos.count(run)
    return {k: row[k] for k in ("expected", "lost", "duplicated", "disorder", "gaps",
                                "recovered:false")}, row


def clean(expected):
    return {"expected": expected, "lost": 0, "duplicated": 0, "disorder": 0, "gaps": 0,
            "recovered:false": 0}


def test_all_delivered_in_order_is_clean():
    run, sub = make_run([(T, 11, 1), (T, 12, 2), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11), note(2, 12), note(3, 13))
    got, row = row_of(run)
    assert got == clean(3)
    assert chaos.row_failed(row) == []


def test_a_missing_message_is_lost():
    run, sub = make_run([(T, 11, 1), (T, 12, 2), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11), note(3, 13))
    got, row = row_of(run)
    assert got == {**clean(3), "lost": 1}
    assert chaos.row_failed(row) == ["lost"]


def test_a_message_twice_is_a_duplicate_not_disorder():
    run, sub = make_run([(T, 11, 1), (T, 12, 2)])
    feed(sub, subscribed(10), note(1, 11), note(2, 12), note(2, 12))
    got, _ = row_of(run)
    assert got == {**clean(2), "duplicated": 1}


def test_offsets_going_back_are_disorder():
    run, sub = make_run([(T, 11, 1), (T, 12, 2), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11), note(3, 13), note(2, 12))
    got, _ = row_of(run)
    assert got == {**clean(3), "disorder": 1}


def test_an_offset_other_than_the_acknowledged_one_is_disorder():
    run, sub = make_run([(T, 11, 1), (T, 12, 2)])
    feed(sub, subscribed(10), note(1, 11), note(2, 14))
    got, _ = row_of(run)
    assert got["disorder"] == 1


def test_an_offset_acknowledged_twice_is_disorder():
    run, sub = make_run([(T, 11, 1), (T, 11, 2)])
    feed(sub, subscribed(10), note(1, 11), note(2, 12))
    got, _ = row_of(run)
    assert got["disorder"] >= 1


def test_a_skipped_unacknowledged_offset_is_a_gap():
    # offset 12 was taken by Redis, its publisher never heard back, and the
    # subscriber never got it: the protocol promises every message after N
    run, sub = make_run([(T, 11, 1), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11), note(3, 13))
    got, _ = row_of(run)
    assert got == {**clean(2), "gaps": 1}


def test_an_unacknowledged_message_delivered_is_fine():
    run, sub = make_run([(T, 11, 1), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11), note(2, 12), note(3, 13))
    got, row = row_of(run)
    assert got == clean(2)
    assert any("no acknowledgement" in t for t in row["notes"]["text"])


def test_resume_asks_since_the_last_offset_received():
    run, sub = make_run([])
    assert "since" not in json.loads(sub.subscribe_request(T))
    feed(sub, subscribed(10))
    assert json.loads(sub.subscribe_request(T))["since"] == {"offset": 10, "epoch": EPOCH}
    feed(sub, note(1, 11), note(2, 12))
    assert json.loads(sub.subscribe_request(T))["since"] == {"offset": 12, "epoch": EPOCH}


def test_recovered_true_then_the_missed_messages_is_clean():
    run, sub = make_run([(T, 11, 1), (T, 12, 2), (T, 13, 3)])
    feed(sub, subscribed(10), note(1, 11))
    sub.subscribe_request(T)  # the reconnect asks since 11
    feed(sub, subscribed(13, recovered=True), note(2, 12), note(3, 13))
    got, _ = row_of(run)
    assert got == clean(3)
    assert sub.problems == []


def test_recovered_false_announces_the_loss():
    run, sub = make_run([(T, 11, 1), (T, 12, 2), (T, 13, 3), (T, 14, 4)])
    feed(sub, subscribed(10), note(1, 11))
    sub.subscribe_request(T)
    feed(sub, subscribed(13, recovered=False), note(4, 14))
    got, row = row_of(run)
    assert got == {**clean(4), "recovered:false": 1}  # 12 and 13 announced, not lost
    assert row["notes"]["announced"] == 2
    assert chaos.row_failed(row) == ["recovered:false"]
    # and the next resume starts from what the reply said
    assert json.loads(sub.subscribe_request(T))["since"] == {"offset": 14, "epoch": EPOCH}


def test_recovered_false_with_a_new_epoch_starts_offsets_over():
    run, sub = make_run([(T, 11, 1), (T, 1, 2), (T, 2, 3)])
    feed(sub, subscribed(10), note(1, 11))
    sub.subscribe_request(T)
    feed(sub, subscribed(0, epoch="e2", recovered=False), note(2, 1), note(3, 2))
    got, _ = row_of(run)
    assert got == {**clean(3), "recovered:false": 1}
    assert json.loads(sub.subscribe_request(T))["since"] == {"offset": 2, "epoch": "e2"}


def test_resume_reply_without_recovered_is_a_problem():
    run, sub = make_run([])
    feed(sub, subscribed(10))
    sub.subscribe_request(T)
    feed(sub, subscribed(10))
    assert any("recovered" in p for p in sub.problems)


def test_without_offsets_matching_is_by_publisher_and_sequence():
    # a server without history: no epochs, no offsets
    run, sub = make_run([(T, None, 1), (T, None, 2), (T, None, 3)])
    feed(sub, {"status": "subscribed", "topic": T})
    assert "since" not in json.loads(sub.subscribe_request(T))
    feed(sub, note(1), note(3), note(2), note(3))
    got, _ = row_of(run)
    assert got == {**clean(3), "duplicated": 1, "disorder": 1}


def test_every_subscriber_and_topic_counts():
    run, sub = make_run([(T, 11, 1), ("chaos.t01", 21, 2)], topics=(T, "chaos.t01"))
    feed(sub, subscribed(10), subscribed(20, topic="chaos.t01"), note(1, 11))
    got, _ = row_of(run)
    assert got == {**clean(2), "lost": 1}


class FakeWS:
    def __init__(self):
        self.sent = []

    async def send(self, text):
        self.sent.append(json.loads(text))


def test_a_refused_resume_is_counted_and_the_topic_subscribed_afresh():
    # a topic without messages yet answers epoch "" (before the fix of the
    # server's empty-epoch resume); a resume with it was refused
    run, sub = make_run([(T, 1, 1), (T, 2, 2), (T, 3, 3)])
    feed(sub, subscribed(0, epoch=""), note(1, 1))
    assert json.loads(sub.subscribe_request(T))["since"] == {"offset": 1, "epoch": ""}
    ws = FakeWS()
    asyncio.run(sub.on_sub_error(ws, T, {"error": "Invalid message format", "code": "invalid_format",
                                         "topic": T, "id": f"sub:{T}"}))
    assert ws.sent == [{"type": "subscribe", "topic": T, "id": f"sub:{T}"}]
    feed(sub, subscribed(2), note(3, 3))  # message 2 was missed
    got, row = row_of(run)
    assert got == {**clean(3), "lost": 1}
    assert row["refused"] == 1
    assert chaos.row_failed(row) == ["lost", "refused"]


def test_bus_unavailable_to_a_resume_asks_again_with_since():
    run, sub = make_run([])
    feed(sub, subscribed(5))
    sub.subscribe_request(T)
    ws = FakeWS()
    asyncio.run(sub.on_sub_error(ws, T, {"error": "x", "code": "bus_unavailable", "topic": T,
                                         "id": f"sub:{T}"}))
    assert ws.sent[0]["since"] == {"offset": 5, "epoch": EPOCH}
    assert chaos.count(run)["refused"] == 0
