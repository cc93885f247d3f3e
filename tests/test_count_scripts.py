"""The claim and count-mark scripts (app_patch/state.py) on a real redis-server.

What they promise: each image's counts are this delivery's to add at most once; only images
claimed in the job are marked, so the counted share never exceeds the claimed share (the
results stage is written at the counted share on the current platform: an inflated share
would complete the job before an image's counts are in); and a delivery takes back only its
own marks.
"""

import pytest

from blipguard.app_patch import state

pytestmark = pytest.mark.stack

PENDING, OWNER, COUNTED = "job:1:pending_images:results", "job:1:pending_images:results:owner", \
    "job:1:pending_images:results:counted"
TTL = 600


@pytest.fixture
def r(redis_server):
    client = redis_server.client(decode_responses=True)
    client.sadd(PENDING, "1", "2", "3")
    return client


def claim(r, delivery, *ids):
    return r.register_script(state.CLAIM)(keys=[PENDING, OWNER, COUNTED], args=[delivery, TTL, *ids])


def count(r, delivery, *ids):
    return r.register_script(state.COUNT)(keys=[COUNTED, OWNER], args=[delivery, TTL, *ids])


def test_an_image_outside_the_job_is_neither_claimed_nor_counted(r):
    assert claim(r, "A", "1", "99") == 1
    assert count(r, "A", "1", "99") == [1, 1]
    assert r.hkeys(COUNTED) == ["1"], "the counted share must not exceed the claimed one"


def test_a_replay_counts_again_and_another_delivery_does_not(r):
    claim(r, "A", "1")
    assert count(r, "A", "1") == [1, 1]
    assert claim(r, "A", "1") == 1 and count(r, "A", "1") == [1, 1]  # a Celery retry after a lost reply
    assert claim(r, "B", "1") == 0 and count(r, "B", "1") == [0, 1]  # a NATS redelivery: counted already


def test_a_mark_taken_back_lets_a_redelivery_take_the_image_over(r):
    claim(r, "A", "2")
    count(r, "A", "2")
    r.register_script(state.UNCOUNT)(keys=[COUNTED], args=["B", "2"])  # not B's: left alone
    assert r.hget(COUNTED, "2") == "A"
    r.register_script(state.UNCOUNT)(keys=[COUNTED], args=["A", "2"])
    assert claim(r, "B", "2") == 1 and count(r, "B", "2") == [1, 1]


def test_the_folded_claim_marks_only_claimed_images(r):
    folded = r.register_script(state.CLAIM_COUNT)
    assert folded(keys=[PENDING, OWNER, COUNTED], args=["A", TTL, "3", "99"]) == [1, 1, 1]
    assert r.hkeys(COUNTED) == ["3"]
    assert folded(keys=[PENDING, OWNER, COUNTED], args=["B", TTL, "3"]) == [0, 0, 1]
