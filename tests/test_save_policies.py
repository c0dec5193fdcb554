"""Save policies as pure tables: synthetic points, no disk, no clock."""
import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError

from trainer_ckpt import (
    CheckpointInfo,
    SaveAny,
    SaveCompletedEpochs,
    SaveEveryNumBatches,
    SaveEveryNumSeconds,
    SaveNever,
    SavePolicy,
)

I = CheckpointInfo
START = I(0, 0, time=100.0)


@pytest.mark.parametrize(
    "current, expected",
    [(I(1, 0), True), (I(3, 0), True), (I(0, 1), False), (I(2, 17), False)],
)
def test_completed_epochs(current, expected):
    assert SaveCompletedEpochs().should_save(current, [START]) is expected


@pytest.mark.parametrize(
    "previous, current, expected",
    [
        # AllenNLP's per-epoch count: batches since the last save in the same epoch, else since 0.
        ([START], I(0, 4), False),
        ([START], I(0, 5), True),
        ([START, I(0, 5)], I(0, 9), False),
        ([START, I(0, 5)], I(0, 10), True),
        ([START, I(0, 5)], I(1, 0), False),  # an epoch end is 0 batches into the next epoch
        ([START, I(0, 15)], I(1, 3), False),  # a new epoch restarts the count
        ([START, I(0, 15)], I(1, 5), True),
        ([I(2, 7, time=0.0)], I(2, 12), True),  # resumed at e2_b7: counts from there
        ([I(2, 7, time=0.0)], I(2, 11), False),
    ],
)
def test_every_num_batches(previous, current, expected):
    assert SaveEveryNumBatches(5).should_save(current, previous) is expected


@pytest.mark.parametrize(
    "last_time, now, expected",
    [(100.0, 159.9, False), (100.0, 160.0, True), (100.0, 1000.0, True), (170.0, 200.0, False)],
)
def test_every_num_seconds_counts_from_the_last_save_or_start(last_time, now, expected):
    previous = [START] if last_time == START.time else [START, I(0, 3, time=last_time)]
    assert SaveEveryNumSeconds(60).should_save(I(0, 9, time=now), previous) is expected


@pytest.mark.parametrize(
    "current, expected",
    [(I(1, 0, time=101.0), True), (I(0, 3, time=101.0), False), (I(0, 3, time=200.0), True)],
)
def test_any_is_a_union(current, expected):
    policy = SaveAny([SaveCompletedEpochs(), SaveEveryNumSeconds(50)])
    assert policy.should_save(current, [START]) is expected
    assert policy.depends_on_clock


def test_never():
    assert not SaveNever().should_save(I(1, 0), [START])
    assert not SaveAny([SaveCompletedEpochs(), SaveNever()]).depends_on_clock


def test_string_shorthand_and_nested_config():
    policy = SavePolicy.from_params(
        Params({"type": "any", "policies": ["completed_epochs", {"type": "every_num_batches", "num_batches": 7}]})
    )
    assert [type(p) for p in policy.policies] == [SaveCompletedEpochs, SaveEveryNumBatches]
    assert policy.policies[1].num_batches == 7
    assert isinstance(SavePolicy.from_params(Params({"type": "never"})), SaveNever)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"type": "every_num_batches", "num_batches": 0}, r"every_num_batches: `num_batches` must be an integer >= 1, got 0\."),
        ({"type": "every_num_batches", "num_batches": -3}, r"got -3\."),
        ({"type": "every_num_seconds", "seconds": 0}, r"every_num_seconds: `seconds` must be a number of seconds > 0, got 0\."),
        ({"type": "every_num_seconds", "seconds": float("inf")}, r"got inf\. Use a positive, finite number\."),
        ({"type": "every_num_seconds", "seconds": -1.5}, r"got -1\.5\."),
        ({"type": "any", "policies": []}, r"any: `policies` must list at least one save policy, got \[\]\."),
        ({"type": "every_num_batch", "num_batches": 3}, r"every_num_batch not in acceptable choices for type: \['completed_epochs', 'every_num_epochs', 'every_num_batches'"),
    ],
)
def test_bad_parameters_are_configuration_errors(params, message):
    with pytest.raises(ConfigurationError, match=message):
        SavePolicy.from_params(Params(params))


def test_bool_is_not_a_count():
    with pytest.raises(ConfigurationError, match=r"`num_batches` must be an integer >= 1, got True\."):
        SaveEveryNumBatches(True)
