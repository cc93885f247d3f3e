"""The stale-job reapers' cutoff around pauses (pure)."""

from blipguard.app_patch.reaper import applies, cutoff_minutes

NOW = 100_000.0


def test_paused_now_defers():
    assert cutoff_minutes(10, NOW, paused_since=NOW - 5, last_pause=None) is None


def test_never_paused_keeps_the_platforms_cutoff():
    assert cutoff_minutes(10, NOW, None, None) == 10


def test_a_recent_pause_does_not_count_toward_staleness():
    # paused 9 min, ended 2 min ago: a job last updated just before the pause (11 min
    # ago) has been unpaused for 2 min only, so it is not stale
    last = (NOW - 660, NOW - 120)
    assert cutoff_minutes(10, NOW, None, last) == 10 + 9


def test_a_pause_long_over_no_longer_extends():
    last = (NOW - 3600, NOW - 3000)  # 10 min pause that ended 50 min ago
    assert cutoff_minutes(10, NOW, None, last) == 10


def test_only_reapers_with_a_minutes_cutoff_are_wrapped():
    def head(minutes=None, dry_run=False): ...
    def pre(hours=None, dry_run=False): ...
    assert applies(head) and not applies(pre)
