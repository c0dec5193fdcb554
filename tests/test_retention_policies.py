"""Retention policies as pure tables: keep-masks over synthetic checkpoints, `now` passed in."""
import dataclasses

import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError

from trainer_ckpt import CheckpointInfo, KeepAll, KeepAny, KeepMostRecentByAge, KeepMostRecentByCount, KeepOnePerTimeWindow, RetentionPolicy


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
        ((0, 10, 59, 60, 61, 130, 179, 200), [True, False, False, False, True, True, False, True]),
        ((5,), [True]),
        ((), []),
    ],
)
def test_one_per_time_window_without_a_run_start(times, expected):
    # AllenNLP's own files carry no run start: the oldest opens the first window; then strictly
    # more than `seconds` after the last kept one, as AllenNLP 2.4 compares.
    assert KeepOnePerTimeWindow(60).should_keep(at_times(*times), now=1e9) == expected


@pytest.mark.parametrize(
    "start, times, expected",
    [
        (0, (10, 59, 60, 61, 121, 122, 200), [False, False, False, True, False, True, True]),
        (-100, (10, 20), [True, False]),
    ],
)
def test_one_per_time_window_counts_from_the_run_start(start, times, expected):
    checkpoints = [dataclasses.replace(c, run_start=start) for c in at_times(*times)]
    assert KeepOnePerTimeWindow(60).should_keep(checkpoints, now=1e9) == expected


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
        ({"type": "most_recent"}, r"retention policy: `type` must name a registered retention policy, got 'most_recent' in \{'type': 'most_recent'\}\. Use one of all, most_recent_by_count, "),
    ],
)
def test_bad_parameters_are_configuration_errors(params, message):
    with pytest.raises(ConfigurationError, match=message):
        RetentionPolicy.from_params(Params(params))


def test_a_fraction_is_not_a_count():
    with pytest.raises(ConfigurationError, match=r"`count` must be an integer >= 1, got 2\.5\."):
        KeepMostRecentByCount(2.5)


from trainer_ckpt.retention_policies import KeepAllOf, KeepBest, KeepEveryNumBatches, KeepEveryNumEpochs, KeepWithinDiskQuota

NAN = float("nan")


def scored(*values, name="accuracy"):
    """Epoch-end checkpoints e1..eN with one metric each; None: no metric recorded."""
    return [
        CheckpointInfo(i + 1, 0, metrics={} if v is None else {name: v}) for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    "metric, count, values, expected",
    [
        ("+accuracy", 1, (0.5, 0.7, 0.6), [False, True, False]),
        ("+accuracy", 2, (0.5, 0.7, 0.6), [False, True, True]),
        ("-accuracy", 1, (0.5, 0.7, 0.6), [True, False, False]),
        ("accuracy", 1, (0.5, 0.7, 0.6), [False, True, False]),  # inferred: higher is better
        ("+accuracy", 1, (0.7, 0.5, 0.7), [True, False, False]),  # a tie: the older stays best
        ("+accuracy", 1, (NAN, 0.1, NAN), [False, True, False]),  # NaN is never best
        ("+accuracy", 2, (float("inf"), 0.1, None), [False, True, False]),  # nor inf, nor missing
        ("+accuracy", 3, (None, None), [False, False]),
        ("+accuracy", 1, (), []),
    ],
)
def test_best(metric, count, values, expected):
    assert KeepBest(metric, count).should_keep(scored(*values), now=0.0) == expected


def test_best_ties_go_to_the_newer_with_greater_or_equal():
    assert KeepBest("+accuracy", greater_or_equal=True).should_keep(scored(0.7, 0.5, 0.7), 0.0) == [False, False, True]


def test_best_by_several_metrics_keeps_each_ones_best():
    checkpoints = [
        CheckpointInfo(1, 0, metrics={"accuracy": 0.9, "loss": 0.8}),
        CheckpointInfo(2, 0, metrics={"accuracy": 0.6, "loss": 0.2}),
        CheckpointInfo(3, 0, metrics={"accuracy": 0.7, "loss": 0.5}),
        CheckpointInfo(3, 10),  # inside an epoch: no validation, never best
    ]
    policy = KeepBest(["+accuracy", "loss"])
    assert policy.should_keep(checkpoints, 0.0) == [True, True, False, False]
    assert policy.explain(checkpoints, 0.0) == [["best(+accuracy)"], ["best(-loss)"], [], []]
    assert policy.describe() == "best(+accuracy, -loss)"


@pytest.mark.parametrize(
    "name, sign",
    [("accuracy", 1.0), ("acc", 1.0), ("span_f1", 1.0), ("mAP", 1.0), ("fscore", 1.0), ("accuracy3", 1.0),
     ("loss", -1.0), ("validation_error", -1.0), ("perplexity", -1.0), ("wer", -1.0)],
)
def test_direction_inferred_from_the_name(name, sign):
    assert KeepBest(name).metrics == [(name, sign)]


@pytest.mark.parametrize(
    "times, totals, expected",
    [((1, 2, 3, 4), (20, 40, 60, 80), [False, True, False, True])],
)
def test_every_num_epochs_and_batches(times, totals, expected):
    checkpoints = [CheckpointInfo(t, 0, total_batches_completed=n) for t, n in zip(times, totals)]
    assert KeepEveryNumEpochs(2).should_keep(checkpoints, 0.0) == expected
    assert KeepEveryNumBatches(40).should_keep(checkpoints, 0.0) == expected
    mid = [CheckpointInfo(1, 5, total_batches_completed=25), CheckpointInfo(1, 15, total_batches_completed=None)]
    assert KeepEveryNumEpochs(1).should_keep(mid, 0.0) == [False, False]
    assert KeepEveryNumBatches(5).should_keep(mid, 0.0) == [True, False]


def sized(*sizes, best=None):
    return [CheckpointInfo(i + 1, 0, size_bytes=s, is_best_so_far=(i == best)) for i, s in enumerate(sizes)]


@pytest.mark.parametrize(
    "sizes, best, quota, expected",
    [
        ((10, 10, 10, 10), None, 25, [False, False, True, True]),
        ((10, 10, 10, 10), None, 40, [True, True, True, True]),
        ((10, 10, 10, 10), 0, 25, [True, False, False, True]),  # the best is protected, and counts
        ((10, 10, 10, 50), None, 25, [False, False, False, True]),  # the newest stays, over quota
        ((10, 30, 5, 5), None, 20, [False, False, True, True]),  # oldest go first: no skipping
        ((), None, 10, []),
    ],
)
def test_disk_quota(sizes, best, quota, expected):
    assert KeepWithinDiskQuota(quota).should_keep(sized(*sizes, best=best), now=0.0) == expected


def test_all_of_and_explanations():
    policy = RetentionPolicy.from_params(
        Params({"type": "any", "policies": [
            {"type": "all_of", "policies": [{"type": "most_recent_by_count", "count": 3}, {"type": "disk_quota", "max_total_bytes": 20}]},
            {"type": "best", "metric": "+accuracy"},
        ]})
    )
    assert isinstance(policy.policies[0], KeepAllOf)
    checkpoints = [CheckpointInfo(i + 1, 0, size_bytes=10, metrics={"accuracy": a}) for i, a in enumerate((0.9, 0.1, 0.2, 0.3))]
    assert policy.should_keep(checkpoints, 0.0) == [True, False, True, True]
    assert policy.explain(checkpoints, 0.0) == [
        ["best(+accuracy)"],
        [],
        ["all_of(most_recent_by_count(3), disk_quota(20))"],
        ["all_of(most_recent_by_count(3), disk_quota(20))"],
    ]
    assert policy.describe() == "any(all_of(most_recent_by_count(3), disk_quota(20)), best(+accuracy))"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"type": "best", "metric": "zorp"}, r"best: cannot tell whether higher or lower is better for metric 'zorp', got no sign\. Write \"\+zorp\" if higher is better, \"-zorp\" if lower is\."),
        ({"type": "best", "metric": "f1_loss"}, r"best: cannot tell whether higher or lower is better for metric 'f1_loss'"),
        ({"type": "best", "metric": "+"}, r"best: a metric must be a name such as \"\+accuracy\" or \"-loss\", got '\+'\."),
        ({"type": "best", "metric": []}, r"best: `metric` must be a metric name or a non-empty list of them, got \[\]\."),
        ({"type": "best", "metric": "+acc", "count": 0}, r"best: `count` must be an integer >= 1, got 0\."),
        ({"type": "every_num_epochs", "num_epochs": 0}, r"every_num_epochs: `num_epochs` must be an integer >= 1, got 0\."),
        ({"type": "every_num_batches", "num_batches": -4}, r"every_num_batches: `num_batches` must be an integer >= 1, got -4\."),
        ({"type": "disk_quota", "max_total_bytes": 0}, r"disk_quota: `max_total_bytes` must be an integer >= 1, got 0\. Give the budget in bytes"),
        ({"type": "all_of", "policies": []}, r"all_of: `policies` must list at least one retention policy, got \[\]\."),
    ],
)
def test_more_bad_parameters(params, message):
    with pytest.raises(ConfigurationError, match=message):
        RetentionPolicy.from_params(Params(params))


def test_greater_or_equal_must_be_a_boolean():
    with pytest.raises(ConfigurationError, match=r"best: `greater_or_equal` must be true or false, got 'yes'\."):
        KeepBest("+acc", greater_or_equal="yes")
