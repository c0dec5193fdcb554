"""Save policies as pure tables: synthetic points, no disk, no clock."""
import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError

from trainer_ckpt import CheckpointInfo, SaveAny, SaveCompletedEpochs, SaveEveryNumBatches, SaveEveryNumSeconds, SaveNever, SavePolicy

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
        ({"type": "every_num_batch", "num_batches": 3}, r"save policy: `type` must name a registered save policy, got 'every_num_batch' in \{'type': 'every_num_batch', 'num_batches': 3\}\. Use one of completed_epochs, every_num_epochs, every_num_batches, "),
    ],
)
def test_bad_parameters_are_configuration_errors(params, message):
    with pytest.raises(ConfigurationError, match=message):
        SavePolicy.from_params(Params(params))


def test_bool_is_not_a_count():
    with pytest.raises(ConfigurationError, match=r"`num_batches` must be an integer >= 1, got True\."):
        SaveEveryNumBatches(True)


from trainer_ckpt.save_policies import SaveAll, SaveAt, SaveBestSoFar, SaveEveryNumEpochs, SaveLastEpoch, SaveNotBefore


def T(e, b, total, **kw):
    return I(e, b, total_batches_completed=total, **kw)


@pytest.mark.parametrize(
    "current, expected",
    [(I(1, 0), False), (I(3, 0), True), (I(6, 0), True), (I(3, 4), False), (I(0, 0), True)],
)
def test_every_num_epochs(current, expected):
    assert SaveEveryNumEpochs(3).should_save(current, [START]) is expected


@pytest.mark.parametrize(
    "current, expected",
    [
        # 20 batches per epoch, a save every 30 batches of the run: after batches 30, 60, 90...
        (T(0, 10, 10), False),
        (T(1, 10, 30), True),
        (T(1, 20, 40), False),
        (T(2, 0, 40), False),
        (T(2, 20, 60), True),
        (T(3, 0, 60), False),  # the epoch end repeats batch 60's count: not a second save
        (T(4, 10, 90), True),
    ],
)
def test_every_num_batches_over_the_whole_run(current, expected):
    assert SaveEveryNumBatches(30, restart_each_epoch=False).should_save(current, [START]) is expected


def test_run_wide_counting_needs_the_total():
    with pytest.raises(ValueError, match=r"every_num_batches: needs the number of batches trained since the start of the run"):
        SaveEveryNumBatches(30, restart_each_epoch=False).should_save(I(0, 30), [START])


@pytest.mark.parametrize(
    "current, expected",
    [
        (T(1, 0, 20), True),
        (T(2, 0, 40), False),
        (T(10, 0, 200), True),
        (T(0, 15, 15), True),
        (T(0, 16, 16), False),
        (T(5, 5, 105), True),
        (T(5, 0, 100), False),  # an epoch end is not "after batch 100"
    ],
)
def test_at_explicit_points(current, expected):
    assert SaveAt(epochs=[1, 10], batches=[15, 105, 100]).should_save(current, [START]) is expected


@pytest.mark.parametrize(
    "current, expected",
    [(T(1, 0, 20), False), (T(2, 0, 40), True), (T(2, 5, 45), False), (T(3, 0, 60), True)],
)
def test_not_before(current, expected):
    policy = SaveNotBefore(SaveCompletedEpochs(), epochs=2)
    assert policy.should_save(current, [START]) is expected
    assert SaveNotBefore(SaveCompletedEpochs(), batches=50).should_save(current, [START]) is (
        expected and current.total_batches_completed >= 50
    )


def test_last_epoch_and_best_so_far_read_what_the_trainer_knew():
    assert SaveLastEpoch().should_save(I(3, 0, training_ends=True), [START])
    assert not SaveLastEpoch().should_save(I(2, 0), [START])
    assert SaveBestSoFar().should_save(I(2, 0, is_best_so_far=True), [START])
    assert not SaveBestSoFar().should_save(I(2, 0), [START])
    assert not SaveBestSoFar().should_save(I(2, 5, is_best_so_far=True), [START])


def test_all_of():
    policy = SaveAll([SaveCompletedEpochs(), SaveEveryNumEpochs(2)])
    assert [policy.should_save(I(e, 0), [START]) for e in range(1, 5)] == [False, True, False, True]
    built = SavePolicy.from_params(Params({"type": "all_of", "policies": ["completed_epochs", "best_so_far"]}))
    assert [type(p) for p in built.policies] == [SaveCompletedEpochs, SaveBestSoFar]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"type": "every_num_epochs", "num_epochs": 0}, r"every_num_epochs: `num_epochs` must be an integer >= 1, got 0\."),
        ({"type": "at"}, r"at: needs `epochs` or `batches`, got epochs=None, batches=None\."),
        ({"type": "at", "epochs": [1, -2]}, r"at: `epochs` must be a list of whole numbers >= 0, got \[1, -2\]\."),
        ({"type": "not_before", "policy": "completed_epochs", "epochs": -1}, r"not_before: `epochs` must be an integer >= 0, got -1\."),
        ({"type": "not_before", "epochs": 2}, r"not_before: missing key\(s\) policy, got \{'type': 'not_before', 'epochs': 2\}\. Its keys are: batches, epochs, policy \(required: policy\)\."),
        ({"type": "all_of", "policies": []}, r"all_of: `policies` must list at least one save policy, got \[\]\."),
    ],
)
def test_more_bad_parameters(params, message):
    with pytest.raises(ConfigurationError, match=message):
        SavePolicy.from_params(Params(params))


def test_flags_must_be_booleans():
    # From a config, AllenNLP's from_params already refuses a non-boolean (TypeError) or turns 0/1
    # into one; in code, the constructor checks.
    with pytest.raises(ConfigurationError, match=r"every_num_batches: `restart_each_epoch` must be true or false, got 'no'\."):
        SaveEveryNumBatches(5, restart_each_epoch="no")
