"""Registries, from_params, every constructor error, and the shipped example configs."""
from pathlib import Path

import pytest
from allennlp.common import Params
from allennlp.common.checks import ConfigurationError
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

import my_policies  # noqa: F401  (the custom-policy example's user package, as --include-package would)
from tests.conftest import ROOT
from trainer_ckpt import Checkpointer, CheckpointerGroup, DefaultCheckpointer, KeepAll, KeepAny, KeepMostRecentByAge, KeepMostRecentByCount, KeepOnePerTimeWindow, SaveAny, SaveCompletedEpochs, SaveEveryNumBatches, SaveEveryNumSeconds, SaveNever


def build(tmp_path, **params):
    return AllenNlpCheckpointer.from_params(Params({"type": "trainer_ckpt", **params}), serialization_dir=str(tmp_path))


def test_registered_in_allennlp_without_replacing_its_default():
    assert AllenNlpCheckpointer.resolve_class_name("trainer_ckpt") == (DefaultCheckpointer, None)
    assert AllenNlpCheckpointer.resolve_class_name("default") == (AllenNlpCheckpointer, None)
    assert Checkpointer.resolve_class_name("default") == (DefaultCheckpointer, None)
    assert Checkpointer.default_implementation == "default"
    assert issubclass(Checkpointer, AllenNlpCheckpointer)


@pytest.mark.parametrize(
    "cls, params",
    [
        (AllenNlpCheckpointer, {"type": "trainer_ckpt"}),
        (AllenNlpCheckpointer, {"type": "trainer_ckpt.DefaultCheckpointer"}),
        (Checkpointer, {}),
        (Checkpointer, {"type": "default"}),
        (DefaultCheckpointer, {}),
    ],
)
def test_from_params_builds_the_default(tmp_path, cls, params):
    checkpointer = cls.from_params(Params(params), serialization_dir=str(tmp_path))
    assert type(checkpointer) is DefaultCheckpointer
    assert type(checkpointer._save_policy) is SaveCompletedEpochs
    assert type(checkpointer._retention_policy) is KeepMostRecentByCount
    assert checkpointer._retention_policy.count == 2


def test_a_user_subclass_registers_on_our_base(tmp_path, restore_registry):
    @Checkpointer.register("mine")
    class Mine(DefaultCheckpointer):
        def __init__(self, serialization_dir: str, tag: str, **kwargs) -> None:
            super().__init__(serialization_dir, **kwargs)
            self.tag = tag

    built = Checkpointer.from_params(
        Params({"type": "mine", "tag": "x", "save_every_num_batches": 4}), serialization_dir=str(tmp_path)
    )
    assert type(built) is Mine and built.tag == "x"
    assert [type(p) for p in built._save_policy.policies] == [SaveCompletedEpochs, SaveEveryNumBatches]
    assert "mine" not in AllenNlpCheckpointer.list_available()


@pytest.mark.parametrize(
    "params, save, keep",
    [
        ({}, [SaveCompletedEpochs], [KeepMostRecentByCount]),
        ({"save_completed_epochs": False}, [SaveNever], [KeepMostRecentByCount]),
        ({"save_every_num_batches": 7, "keep_most_recent_by_count": None}, [SaveCompletedEpochs, SaveEveryNumBatches], [KeepAll]),
        ({"save_every_num_seconds": 60, "keep_most_recent_by_age": 3600}, [SaveCompletedEpochs, SaveEveryNumSeconds], [KeepMostRecentByCount, KeepMostRecentByAge]),
        ({"keep_most_recent_by_count": None, "keep_most_recent_by_age": 10}, [SaveCompletedEpochs], [KeepMostRecentByAge]),
        ({"num_serialized_models_to_keep": -1}, [SaveCompletedEpochs], [KeepAll]),
        ({"num_serialized_models_to_keep": None}, [SaveCompletedEpochs], [KeepAll]),
        ({"num_serialized_models_to_keep": 3, "keep_serialized_model_every_num_seconds": 60, "model_save_interval": 5},
         [SaveCompletedEpochs, SaveEveryNumSeconds], [KeepMostRecentByCount, KeepOnePerTimeWindow]),
        ({"save_policy": "every_num_seconds" and {"type": "every_num_seconds", "seconds": 9}, "retention_policy": "all"},
         [SaveEveryNumSeconds], [KeepAll]),
    ],
)
def test_flat_keys_build_policies(tmp_path, params, save, keep):
    checkpointer = build(tmp_path, **params)
    save_policy, retention_policy = checkpointer._save_policy, checkpointer._retention_policy
    assert [type(p) for p in getattr(save_policy, "policies", [save_policy])] == save
    assert [type(p) for p in getattr(retention_policy, "policies", [retention_policy])] == keep
    if isinstance(save_policy, SaveAny) and "save_every_num_batches" in params:
        assert save_policy.policies[1].num_batches == 7
    if isinstance(retention_policy, KeepAny) and "num_serialized_models_to_keep" in params:
        assert retention_policy.policies[0].count == 3 and retention_policy.policies[1].seconds == 60


W = r"trainer_ckpt checkpointer: "


@pytest.mark.parametrize(
    "params, message",
    [
        ({"keep_most_recent_by_count": 0}, W + r"`keep_most_recent_by_count` must be an integer >= 1, got 0\. The newest checkpoint is always kept \(the trainer links best\.th to it\); use 1 to keep only the newest, or null to keep all\."),
        ({"keep_most_recent_by_count": -2}, W + r"`keep_most_recent_by_count` must be an integer >= 1, got -2\."),
        ({"num_serialized_models_to_keep": 0}, W + r"`num_serialized_models_to_keep` must be an integer >= 1, got 0\."),
        ({"num_serialized_models_to_keep": -5}, W + r"`num_serialized_models_to_keep` must be an integer >= 1, got -5\."),
        ({"keep_most_recent_by_age": 0}, W + r"`keep_most_recent_by_age` must be a number of seconds > 0, got 0\."),
        ({"keep_most_recent_by_age": -1}, W + r"`keep_most_recent_by_age` must be a number of seconds > 0, got -1\."),
        ({"save_every_num_seconds": 0}, W + r"`save_every_num_seconds` must be a number of seconds > 0, got 0\."),
        ({"save_every_num_seconds": float("nan")}, W + r"`save_every_num_seconds` must be a number of seconds > 0, got nan\."),
        ({"model_save_interval": -10}, W + r"`model_save_interval` must be a number of seconds > 0, got -10\."),
        ({"save_every_num_batches": 0}, W + r"`save_every_num_batches` must be an integer >= 1, got 0\."),
        ({"save_every_num_batches": 2.5}, W + r"`save_every_num_batches` must be an integer >= 1, got 2\.5\."),
        ({"save_every_num_batches": "10"}, W + r"`save_every_num_batches` must be an integer >= 1, got '10'\."),
        ({"save_every_num_seconds": "1h"}, W + r"`save_every_num_seconds` must be a number of seconds > 0, got '1h'\."),
        ({"keep_most_recent_by_count": [2]}, W + r"`keep_most_recent_by_count` must be an integer >= 1, got \[2\]\."),
        ({"save_completed_epochs": "yes"}, W + r"`save_completed_epochs` must be true or false, got 'yes'\. Use a JSON boolean\."),
        ({"save_completed_epochs": None}, W + r"`save_completed_epochs` must be true or false, got None\."),
        ({"keep_serialized_model_every_num_seconds": 0, "num_serialized_models_to_keep": 2}, W + r"`keep_serialized_model_every_num_seconds` must be a number of seconds > 0, got 0\."),
        ({"keep_serialized_model_every_num_seconds": 60, "num_serialized_models_to_keep": -1}, W + r"`keep_serialized_model_every_num_seconds` only thins out checkpoints that `num_serialized_models_to_keep` would delete, got keep_serialized_model_every_num_seconds=60 with num_serialized_models_to_keep=null, which keeps all\."),
        ({"keep_most_recent_by_count": 3, "num_serialized_models_to_keep": 2}, W + r"`keep_most_recent_by_count` and `num_serialized_models_to_keep` both set how many checkpoints to keep, got 3 and 2\. Keep only `keep_most_recent_by_count`"),
        ({"save_every_num_seconds": 60, "model_save_interval": 60}, W + r"`save_every_num_seconds` and `model_save_interval` both set the save interval, got 60 and 60\."),
        ({"save_policy": "completed_epochs", "save_every_num_batches": 5}, W + r"`save_policy` and the flat key\(s\) save_every_num_batches both say the same thing, got save_policy=SaveCompletedEpochs and save_every_num_batches=5\. Use one"),
        ({"save_policy": "completed_epochs", "save_completed_epochs": True}, W + r"`save_policy` and the flat key\(s\) save_completed_epochs both say the same thing"),
        ({"retention_policy": "all", "keep_most_recent_by_count": None}, W + r"`retention_policy` and the flat key\(s\) keep_most_recent_by_count both say the same thing, got retention_policy=KeepAll and keep_most_recent_by_count=None\."),
        ({"retention_policy": "all", "keep_most_recent_by_age": 5, "num_serialized_models_to_keep": 1}, W + r"`retention_policy` and the flat key\(s\) keep_most_recent_by_age, num_serialized_models_to_keep both"),
        ({"save_policy": {"type": "every_num_batches", "num_batches": 0}}, r"every_num_batches: `num_batches` must be an integer >= 1, got 0\."),
        ({"retention_policy": {"type": "most_recent_by_count", "count": 0}}, r"most_recent_by_count: `count` must be an integer >= 1, got 0\."),
        ({"save_policy": "every_epoch"}, r"save policy: `type` must name a registered save policy, got 'every_epoch' in \{'type': 'every_epoch'\}\. Use one of completed_epochs, "),
        ({"keep_most_recent": 2}, r"Extra parameters passed to DefaultCheckpointer: {'keep_most_recent': 2}"),
        ({"on_save_error": "ignore"}, W + r'`on_save_error` must be "raise" or "warn", got \'ignore\'\. Use "warn" to log a failed save and let training go on\.'),
        ({"safe_globals": ["no_such_module.Thing"]}, W + r"`safe_globals` entries must be importable fully qualified names, got 'no_such_module\.Thing' \(No module named 'no_such_module'\)\."),
        ({"safe_globals": ["collections.NoSuchClass"]}, W + r"`safe_globals` entries must be importable fully qualified names, got 'collections\.NoSuchClass'"),
        ({"clock": "wall"}, W + r"`clock` must be a callable returning seconds, got 'wall'\. It is for code and tests only; remove it from the config\."),
    ],
)
def test_bad_configs_fail_at_construction(tmp_path, params, message):
    with pytest.raises(ConfigurationError, match=message):
        build(tmp_path, **params)
    assert list(tmp_path.iterdir()) == []  # nothing written


EXAMPLES = sorted((ROOT / "training_configs").glob("*.jsonnet"))


def test_there_are_examples_for_every_common_need():
    assert {p.stem for p in EXAMPLES} >= {"epoch_saves", "every_n_batches_keep_3", "hourly_keep", "custom_policy"}


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_config_builds(tmp_path, config: Path):
    params = Params.from_file(str(config))
    checkpointer = AllenNlpCheckpointer.from_params(
        params["trainer"].pop("checkpointer"), serialization_dir=str(tmp_path)
    )
    assert isinstance(checkpointer, (DefaultCheckpointer, CheckpointerGroup))


def test_an_unregistered_policy_by_its_fully_qualified_name(tmp_path):
    from tests.conftest import saved, trainer_at

    checkpointer = build(tmp_path, retention_policy={"type": "my_policies.KeepEvenEpochs"})
    for e in range(1, 6):
        checkpointer.save_checkpoint(trainer_at(e, 0))
    assert saved(tmp_path) == [(2, 0), (4, 0), (5, 0)]
    assert checkpointer._retention_policy.describe() == "KeepEvenEpochs"


def test_a_group_builds_from_config(tmp_path):
    group = build(tmp_path, type="trainer_ckpt_group", checkpointers=[
        {"save_every_num_batches": 5}, {"filename_prefix": "best_", "save_policy": "best_so_far"}])
    assert [m._store.prefix for m in group.members] == ["", "best_"]
    group.state_is_sharded = True
    assert all(m.state_is_sharded for m in group.members)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"type": "trainer_ckpt_group", "checkpointers": []}, r"group: `checkpointers` must list at least one checkpointer, got \[\]\."),
        ({"type": "trainer_ckpt_group", "checkpointers": [{}, {"keep_most_recent_by_count": 3}]}, r"group: every checkpointer needs its own `filename_prefix`, got \['', ''\]\."),
        ({"filename_prefix": "../x"}, r"`filename_prefix` must be letters, digits, '_' or '-', got '\.\./x'\."),
    ],
)
def test_group_and_prefix_errors(tmp_path, params, message):
    with pytest.raises(ConfigurationError, match=message):
        AllenNlpCheckpointer.from_params(Params({"type": "trainer_ckpt", **params}), serialization_dir=str(tmp_path))
