"""
Every parameter of every built-in policy, written wrong the way a jsonnet config can write it (a
float for a count, a string for a number, a number for a flag, a scalar for a list...): each is a
ConfigurationError in our format, `<where>: <what>, got <value>. <fix>.`, at construction, also
when nested in another policy or in the checkpointer's block.
"""
import inspect

import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError

from trainer_ckpt import DefaultCheckpointer, RetentionPolicy, SavePolicy

S, R = SavePolicy, RetentionPolicy
INT = r"must be an integer >= 1, got {}\. "
SECONDS = r"must be a number of seconds > 0, got {}\. "
FLAG = r"must be true or false, got {}\. Use a JSON boolean\."
LIST = r"must be a list of whole numbers >= 0, got {}\. Write e\.g\. \[1, 5, 10\]\."

# (base, type, parameter, wrong value, message)
TABLE = [
    (S, "every_num_epochs", "num_epochs", 2.5, "every_num_epochs: `num_epochs` " + INT.format(r"2\.5")),
    (S, "every_num_epochs", "num_epochs", "2", "every_num_epochs: `num_epochs` " + INT.format("'2'")),
    (S, "every_num_batches", "num_batches", True, "every_num_batches: `num_batches` " + INT.format("True")),
    (S, "every_num_batches", "num_batches", [5], "every_num_batches: `num_batches` " + INT.format(r"\[5\]")),
    (S, "every_num_batches", "restart_each_epoch", "no", "every_num_batches: `restart_each_epoch` " + FLAG.format("'no'")),
    (S, "every_num_batches", "restart_each_epoch", 0, "every_num_batches: `restart_each_epoch` " + FLAG.format("0")),
    (S, "every_num_seconds", "seconds", "1h", "every_num_seconds: `seconds` " + SECONDS.format("'1h'")),
    (S, "every_num_seconds", "seconds", None, "every_num_seconds: `seconds` " + SECONDS.format("None")),
    (S, "at", "epochs", 3, "at: `epochs` " + LIST.format("3")),
    (S, "at", "epochs", [1.5], "at: `epochs` " + LIST.format(r"\[1\.5\]")),
    (S, "at", "batches", "100", "at: `batches` " + LIST.format("'100'")),
    (S, "at", "batches", [-1], "at: `batches` " + LIST.format(r"\[-1\]")),
    (S, "not_before", "policy", 3, r"not_before: `policy` is not a valid save policy, got 3\. save policy: must be a type name or a \{\"type\": \.\.\.\} block, got 3\. Write e\.g\. "),
    (S, "not_before", "policy", "every_epoch", r"not_before: `policy` is not a valid save policy, got 'every_epoch'\. save policy: `type` must name a registered save policy, got 'every_epoch'"),
    (S, "not_before", "epochs", 1.5, r"not_before: `epochs` must be an integer >= 0, got 1\.5\. Use a whole number\."),
    (S, "not_before", "batches", "10", r"not_before: `batches` must be an integer >= 0, got '10'\. Use a whole number\."),
    (S, "any", "policies", "completed_epochs", r"any: `policies` must list at least one save policy, got 'completed_epochs'\. Add one, e\.g\. \[\"completed_epochs\"\]"),
    (S, "any", "policies", [{"type": "every_num_epochs", "num_epochs": 0}], r"any: `policies\[0\]` is not a valid save policy, got \{'type': 'every_num_epochs', 'num_epochs': 0\}\. every_num_epochs: `num_epochs` " + INT.format("0")),
    (S, "all_of", "policies", {"type": "never"}, r"all_of: `policies` must list at least one save policy, got \{'type': 'never'\}\. "),
    (S, "all_of", "policies", ["completed_epochs", 7], r"all_of: `policies\[1\]` is not a valid save policy, got 7\. save policy: must be a type name"),
    (R, "most_recent_by_count", "count", 2.5, "most_recent_by_count: `count` " + INT.format(r"2\.5")),
    (R, "most_recent_by_count", "count", "3", "most_recent_by_count: `count` " + INT.format("'3'")),
    (R, "most_recent_by_age", "seconds", "1d", "most_recent_by_age: `seconds` " + SECONDS.format("'1d'")),
    (R, "one_per_time_window", "seconds", [60], "one_per_time_window: `seconds` " + SECONDS.format(r"\[60\]")),
    (R, "every_num_epochs", "num_epochs", 1.0, "every_num_epochs: `num_epochs` " + INT.format(r"1\.0")),
    (R, "every_num_batches", "num_batches", False, "every_num_batches: `num_batches` " + INT.format("False")),
    (R, "best", "metric", 3, r"best: `metric` must be a metric name or a non-empty list of them, got 3\. Write e\.g\. \"\+accuracy\"\."),
    (R, "best", "metric", ["+accuracy", 3], r"best: a metric must be a name such as \"\+accuracy\" or \"-loss\", got 3\. "),
    (R, "best", "metric", "fancy_score", r"best: cannot tell whether higher or lower is better for metric 'fancy_score', got no sign\. Write \"\+fancy_score\""),
    (R, "best", "count", "2", "best: `count` " + INT.format("'2'")),
    (R, "best", "greater_or_equal", 1, "best: `greater_or_equal` " + FLAG.format("1")),
    (R, "disk_quota", "max_total_bytes", 1e9, "disk_quota: `max_total_bytes` " + INT.format(r"1000000000\.0")),
    (R, "disk_quota", "max_total_bytes", "10GB", "disk_quota: `max_total_bytes` " + INT.format("'10GB'")),
    (R, "any", "policies", 2, r"any: `policies` must list at least one retention policy, got 2\. "),
    (R, "all_of", "policies", [{"type": "best", "metric": "+acc", "count": 0.5}], r"all_of: `policies\[0\]` is not a valid retention policy, got .*best: `count` " + INT.format(r"0\.5")),
]
VALID = {  # the other parameters a block needs, so that only the one under test is wrong
    "every_num_epochs": {"num_epochs": 2}, "every_num_batches": {"num_batches": 5}, "every_num_seconds": {"seconds": 60},
    "at": {}, "not_before": {"policy": "completed_epochs"}, "most_recent_by_count": {"count": 2},
    "most_recent_by_age": {"seconds": 60}, "one_per_time_window": {"seconds": 60}, "best": {"metric": "+accuracy"},
    "disk_quota": {"max_total_bytes": 10**9}, "any": {}, "all_of": {},
}


@pytest.mark.parametrize("base, name, key, value, message", TABLE, ids=[f"{t[1]}.{t[2]}={t[3]!r}" for t in TABLE])
def test_a_wrong_value_is_a_configuration_error_in_our_format(base, name, key, value, message):
    block = {"type": name, **VALID[name], key: value}
    with pytest.raises(ConfigurationError, match="^" + message):
        base.from_params(Params(block))


def test_the_table_covers_every_parameter_of_every_built_in_policy():
    covered = {(base, name, key) for base, name, key, *_ in TABLE}
    for base in (SavePolicy, RetentionPolicy):
        for name in base.list_available():
            cls, _ = base.resolve_class_name(name)
            if not cls.__module__.startswith("trainer_ckpt."):
                continue  # a test plugin's policy
            if cls.__init__ is object.__init__:
                continue  # no parameters
            for key in list(inspect.signature(cls.__init__).parameters)[1:]:
                assert (base, name, key) in covered, f"{base.__name__} {name!r}: parameter {key!r} has no row"


@pytest.mark.parametrize(
    "base, block, message",
    [
        (S, {"type": "every_num_epochs"}, r"every_num_epochs: missing key\(s\) num_epochs, got \{'type': 'every_num_epochs'\}\. Its keys are: num_epochs \(required: num_epochs\)\."),
        (S, {"type": "completed_epochs", "every": 2}, r"completed_epochs: unknown key\(s\) every, got \{'type': 'completed_epochs', 'every': 2\}\. Its keys are: none\."),
        (R, {"type": "best", "metric": "+acc", "n_saved": 2}, r"best: unknown key\(s\) n_saved, got .*\. Its keys are: count, greater_or_equal, metric\."),
        (R, {"count": 2}, r"retention policy: `type` must name a registered retention policy, got None in \{'count': 2\}\. Use one of all, "),
        (S, {"type": 3}, r"save policy: `type` must name a registered save policy, got 3 in "),
    ],
)
def test_block_shape_errors(base, block, message):
    with pytest.raises(ConfigurationError, match="^" + message):
        base.from_params(Params(block))


def test_in_the_checkpointer_block_too(tmp_path):
    params = Params({"retention_policy": {"type": "any", "policies": [{"type": "most_recent_by_count", "count": 2.5}]}})
    with pytest.raises(ConfigurationError, match=(
        r"^any: `policies\[0\]` is not a valid retention policy, got \{'type': 'most_recent_by_count', 'count': 2\.5\}\. "
        r"most_recent_by_count: `count` must be an integer >= 1, got 2\.5\."
    )):
        DefaultCheckpointer.from_params(params, serialization_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock taken
