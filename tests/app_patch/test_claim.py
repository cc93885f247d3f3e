"""The results-stage claim and its count mark: one round trip where the host acked before
its results stage (nothing can be redelivered between the two), two otherwise. The Lua
scripts themselves run against real Redis in the end-to-end suite (tests/test_chaos.py)."""

import dataclasses

import pytest

from blipguard.app_patch import context, state


@dataclasses.dataclass
class Progress:
    remaining: int
    total: int
    processed: int
    percentage: float
    failed: int
    newly_removed: int = 0


class Host:
    progress = staticmethod(Progress)


class Pipeline:
    def __init__(self, redis):
        self.redis, self.calls = redis, []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))

    def execute(self):
        self.redis.sent.append(self.calls)
        first = self.calls[0]
        if first[0] == "evalsha" and first[1][0] == state.CLAIM_COUNT_SHA:
            claimed = [1, 1, 3]
        else:
            claimed = 1
        return [claimed, 4, 0, b"10"][-len(self.calls):]


class Redis:
    def __init__(self):
        self.sent, self.scripts = [], []

    def pipeline(self):
        return Pipeline(self)

    def register_script(self, source):
        return lambda keys, args: self.scripts.append(source) or [1, 3]


class Manager:
    job_id, TIMEOUT = 5, 60
    _total_key, _failed_key = "job:5:total", "job:5:failed"

    def __init__(self):
        self.redis = Redis()

    def _get_redis(self):
        return self.redis

    def _get_pending_key(self, stage):
        return f"job:5:pending:{stage}"


@pytest.mark.parametrize("acked, stage, folded", [
    (True, "results", True),  # the pre-fix order: acked, then the results stage
    (False, "results", False),  # the current order: the progress write, then the ack
    (True, "process", False),  # no counts in the process stage
])
def test_the_count_mark_rides_on_the_claim_only_after_the_ack(acked, stage, folded):
    manager = Manager()
    run = context.TaskRun(5, delivery="d1", ack_attempted=acked)
    with context.running(run):
        progress = state.update_state(manager, [7], stage, host=Host())
        claim = run.claims[stage]
        assert claim.count() == (1, 3)
    [calls] = manager.redis.sent
    assert calls[0][1][0] == (state.CLAIM_COUNT_SHA if folded else state.CLAIM_SHA)
    assert manager.redis.scripts == ([] if folded else [state.COUNT]), "one round trip when folded"
    assert progress.newly_removed == 1 and claim.ids == ["7"]


def test_the_folded_script_is_the_claim_then_the_count_mark():
    assert state.CLAIM_COUNT.startswith(state.CLAIM.rsplit("return n", 1)[0])
    assert "mark(KEYS[3], KEYS[2])" in state.CLAIM_COUNT and "HLEN', KEYS[3]" in state.CLAIM_COUNT
    assert "mark(KEYS[1], KEYS[2])" in state.COUNT, "one marking function for both scripts"
