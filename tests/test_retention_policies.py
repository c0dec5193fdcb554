"""Retention policies as pure tables: keep-masks over synthetic checkpoints, `now` passed in."""
import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError

from trainer_ckpt import (
    CheckpointInfo,
    KeepAll,
    KeepAny,
    KeepMostRecentByAge,
    KeepMostRecentByCount,
    KeepOnePerTimeWindow,
    RetentionPolicy,
)


def at_times(*times):
    return [CheckpointInfo(i + 1, 0, time=t) for i, t in enumerate(times)]


@pytest.mark.parametrize(
    "count, n, expected",
    [
        (2, 0, []),
        (2, 1, [True]),
        (2, 2, [True, True]),
        (2, 5, [False, False, False, True, True]),
        (1, 3, [False, False, True]),
        (10, 3, [True, True, True]),
    ],
)
def test_most_recent_by_count(count, n, expected):
    assert KeepMostRecentByCount(count).should_keep(at_times(*range(n)), now=0.0) == expected


@pytest.mark.parametrize(
    "times, now, expected",
    [
        ((0, 50, 90, 100), 100.0, [False, True, True, True]),  # age 100 > 60; age 60 is kept (<=)
        ((0, 39.9), 100.0, [False, False]),
        ((), 100.0, []),
    ],
)
def test_most_recent_by_age(times, now, expected):
    assert KeepMostRecentByAge(60).should_keep(at_times(*times), now=now) == expected


@pytest.mark.parametrize(
    "times, expected",
    [
        ((0, 10, 59, 60, 61, 130, 179, 200), [True, False, False, True, False, True, False, True]),
        ((5,), [True]),
        ((), []),
    ],
)
def test_one_per_time_window(times, expected):
    assert KeepOnePerTimeWindow(60).should_keep(at_times(*times), now=1e9) == expected


def test_one_per_time_window_is_stable_under_its_own_deletions():
    policy = KeepOnePerTimeWindow(60)
    times = (0, 10, 59, 60, 61, 130, 179, 200)
    first = policy.should_keep(at_times(*times), now=0.0)
    survivors = [t for t, keep in zip(times, first) if keep] + [250, 265]
    second = policy.should_keep(at_times(*survivors), now=0.0)
    assert second[: sum(first)] == [True] * sum(first)


def test_all_and_any():
    checkpoints = at_times(0, 50, 90, 100)
    assert KeepAll().should_keep(checkpoints, now=100.0) == [True] * 4
    union = KeepAny([KeepMostRecentByCount(1), KeepOnePerTimeWindow(80)])
    assert union.should_keep(checkpoints, now=100.0) == [True, False, True, True]
    assert union.should_keep([], now=100.0) == []


def test_from_config():
    policy = RetentionPolicy.from_params(
        Params({"type": "any", "policies": ["all", {"type": "most_recent_by_age", "seconds": 3}]})
    )
    assert isinstance(policy.policies[0], KeepAll) and policy.policies[1].seconds == 3.0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"type": "most_recent_by_count", "count": 0}, r"most_recent_by_count: `count` must be an integer >= 1, got 0\. The newest checkpoint is always kept"),
        ({"type": "most_recent_by_age", "seconds": 0}, r"most_recent_by_age: `seconds` must be a number of seconds > 0, got 0\."),
        ({"type": "one_per_time_window", "seconds": -60}, r"one_per_time_window: `seconds` must be a number of seconds > 0, got -60\."),
        ({"type": "any", "policies": []}, r"any: `policies` must list at least one retention policy, got \[\]\."),
        ({"type": "most_recent"}, r"most_recent not in acceptable choices for type: \['all', 'most_recent_by_count'"),
    ],
)
def test_bad_parameters_are_configuration_errors(params, message):
    with pytest.raises(ConfigurationError, match=message):
        RetentionPolicy.from_params(Params(params))


def test_a_fraction_is_not_a_count():
    with pytest.raises(ConfigurationError, match=r"`count` must be an integer >= 1, got 2\.5\."):
        KeepMostRecentByCount(2.5)
