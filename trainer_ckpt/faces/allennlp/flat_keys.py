"""
AllenNLP's flat checkpointer keys (2.10 and 2.4) turned into policies: the one code path beneath.
"""
from typing import Any, Dict, List, Optional, Union

from allennlp.common.checks import ConfigurationError

from trainer_ckpt.policies.registry import WHERE as _WHERE
from trainer_ckpt.policies.registry import flag, positive_int, positive_seconds
from trainer_ckpt.policies.retention import (
    KeepAll,
    KeepAny,
    KeepMostRecentByAge,
    KeepMostRecentByCount,
    KeepOnePerTimeWindow,
    RetentionPolicy,
)
from trainer_ckpt.policies.save import (
    SaveAny,
    SaveCompletedEpochs,
    SaveEveryNumBatches,
    SaveEveryNumSeconds,
    SaveNever,
    SavePolicy,
)


class _Unset:
    """The default of flat keys whose own default (or null) means something, to spot conflicts.
    In a `Union` annotation it also lets `from_params` pass the default through untouched."""

    def __repr__(self) -> str:
        return "<not set>"

    def __deepcopy__(self, memo: Dict[int, Any]) -> "_Unset":
        return self  # from_params deep-copies arguments; the sentinel must stay itself


UNSET: Any = _Unset()
# Flat-key annotations. The `_Unset` member also makes `from_params` hand a value of the wrong
# type through to our validation, which names the key, the value and the fix.
Flag = Union[bool, _Unset]
Count = Union[int, None, _Unset]
Seconds = Union[float, None, _Unset]


def save_policy_from(
    policy: Optional[SavePolicy],
    save_completed_epochs: Any,
    save_every_num_seconds: Optional[float],
    save_every_num_batches: Optional[int],
    model_save_interval: Optional[float],
) -> SavePolicy:
    flat = {
        "save_completed_epochs": save_completed_epochs,
        "save_every_num_seconds": save_every_num_seconds,
        "save_every_num_batches": save_every_num_batches,
        "model_save_interval": model_save_interval,
    }
    given = {k: v for k, v in flat.items() if v is not None and v is not UNSET}
    if policy is not None:
        _no_flat_keys("save_policy", policy, given)
        return SavePolicy.build(_WHERE, "save_policy", policy)
    if save_every_num_seconds is not None and model_save_interval is not None:
        _both_generations("save_every_num_seconds", save_every_num_seconds, "model_save_interval",
                          model_save_interval, "the save interval")
    if save_completed_epochs is UNSET:
        save_completed_epochs = True
    flag(_WHERE, "save_completed_epochs", save_completed_epochs)
    policies: List[SavePolicy] = []
    if save_completed_epochs:
        policies.append(SaveCompletedEpochs())
    for key in ("save_every_num_seconds", "model_save_interval"):
        if flat[key] is not None:
            policies.append(SaveEveryNumSeconds(positive_seconds(_WHERE, key, flat[key])))
    if save_every_num_batches is not None:
        policies.append(
            SaveEveryNumBatches(positive_int(_WHERE, "save_every_num_batches", save_every_num_batches))
        )
    if not policies:
        return SaveNever()
    return policies[0] if len(policies) == 1 else SaveAny(policies)


def retention_policy_from(
    policy: Optional[RetentionPolicy],
    keep_most_recent_by_count: Any,
    keep_most_recent_by_age: Optional[float],
    num_serialized_models_to_keep: Any,
    keep_serialized_model_every_num_seconds: Optional[float],
) -> RetentionPolicy:
    flat = {
        "keep_most_recent_by_count": keep_most_recent_by_count,
        "keep_most_recent_by_age": keep_most_recent_by_age,
        "num_serialized_models_to_keep": num_serialized_models_to_keep,
        "keep_serialized_model_every_num_seconds": keep_serialized_model_every_num_seconds,
    }
    # The count keys default to UNSET, so a null there was written on purpose.
    nullable = ("keep_most_recent_by_count", "num_serialized_models_to_keep")
    given = {k: v for k, v in flat.items() if v is not UNSET and (v is not None or k in nullable)}
    if policy is not None:
        _no_flat_keys("retention_policy", policy, given)
        return RetentionPolicy.build(_WHERE, "retention_policy", policy)
    if keep_most_recent_by_count is not UNSET and num_serialized_models_to_keep is not UNSET:
        _both_generations("keep_most_recent_by_count", keep_most_recent_by_count,
                          "num_serialized_models_to_keep", num_serialized_models_to_keep,
                          "how many checkpoints to keep")
    count_key = "keep_most_recent_by_count"
    count = keep_most_recent_by_count
    if num_serialized_models_to_keep is not UNSET:
        count_key, count = "num_serialized_models_to_keep", num_serialized_models_to_keep
        if count == -1:
            count = None  # AllenNLP 2.4: -1 keeps all
    elif count is UNSET:
        count = 2
    fix = (
        "The newest checkpoint is always kept (the trainer links best.th to it); "
        "use 1 to keep only the newest, or null to keep all."
    )
    if count is not None:
        positive_int(_WHERE, count_key, count, fix)
    policies: List[RetentionPolicy] = []
    if count is not None:
        policies.append(KeepMostRecentByCount(count))
    if keep_most_recent_by_age is not None:
        seconds = positive_seconds(_WHERE, "keep_most_recent_by_age", keep_most_recent_by_age)
        policies.append(KeepMostRecentByAge(seconds))
    if keep_serialized_model_every_num_seconds is not None:
        key = "keep_serialized_model_every_num_seconds"
        if count is None:
            raise ConfigurationError(
                f"{_WHERE}: `{key}` only thins out checkpoints that `{count_key}` would delete, "
                f"got {key}={keep_serialized_model_every_num_seconds!r} with {count_key}=null, "
                f"which keeps all. Set {count_key} to a number, or remove {key}."
            )
        policies.append(
            KeepOnePerTimeWindow(positive_seconds(_WHERE, key, keep_serialized_model_every_num_seconds))
        )
    if not policies:
        return KeepAll()
    return policies[0] if len(policies) == 1 else KeepAny(policies)


def _no_flat_keys(policy_key: str, policy: Any, given: Dict[str, Any]) -> None:
    if given:
        listed = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ConfigurationError(
            f"{_WHERE}: `{policy_key}` and the flat key(s) {', '.join(given)} both say the same "
            f"thing, got {policy_key}={type(policy).__name__} and {listed}. Use one: express the "
            f'whole rule in `{policy_key}` (combine rules with {{"type": "any", "policies": [...]}}).'
        )


def _both_generations(key: str, value: Any, old_key: str, old_value: Any, what: str) -> None:
    raise ConfigurationError(
        f"{_WHERE}: `{key}` and `{old_key}` both set {what}, got {value!r} and {old_value!r}. "
        f"Keep only `{key}` ({old_key} is AllenNLP 2.4's name)."
    )
