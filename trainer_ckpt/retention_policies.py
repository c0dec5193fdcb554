"""
Retention policies: *what to keep*. Each returns a keep-mask over the checkpoints on disk,
oldest first, computed from data alone; the checkpointer passes `now` in and does the deleting.
The checkpointer always keeps the newest complete checkpoint, whatever the policy says.
"""
from typing import List, Sequence

from allennlp.common import Registrable
from allennlp.common.checks import ConfigurationError

from trainer_ckpt._validate import positive_int, positive_seconds
from trainer_ckpt.checkpoint_info import CheckpointInfo


class RetentionPolicy(Registrable):
    """
    Decides which checkpoints stay on disk. Subclass it, implement `should_keep`, and
    `@RetentionPolicy.register("name")` it.

    `should_keep(checkpoints, now)` gets the complete checkpoints, oldest first, each with the
    time it was saved, and returns one bool per checkpoint.
    """

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        raise NotImplementedError


@RetentionPolicy.register("all")
class KeepAll(RetentionPolicy):
    """Keeps every checkpoint."""

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [True] * len(checkpoints)


@RetentionPolicy.register("most_recent_by_count")
class KeepMostRecentByCount(RetentionPolicy):
    """
    Keeps the `count` newest checkpoints (AllenNLP's `keep_most_recent_by_count`).

    # Parameters

    count : `int`
        How many to keep, >= 1.
    """

    def __init__(self, count: int) -> None:
        self.count = positive_int(
            "most_recent_by_count",
            "count",
            count,
            "The newest checkpoint is always kept; use null (or the \"all\" policy) to keep all.",
        )

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        first_kept = max(0, len(checkpoints) - self.count)
        return [i >= first_kept for i in range(len(checkpoints))]


@RetentionPolicy.register("most_recent_by_age")
class KeepMostRecentByAge(RetentionPolicy):
    """
    Keeps checkpoints saved at most `seconds` ago (AllenNLP's `keep_most_recent_by_age`).

    # Parameters

    seconds : `float`
        Maximum age in seconds, > 0.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = positive_seconds("most_recent_by_age", "seconds", seconds)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [now - c.time <= self.seconds for c in checkpoints]


@RetentionPolicy.register("one_per_time_window")
class KeepOnePerTimeWindow(RetentionPolicy):
    """
    Keeps checkpoints permanently at least `seconds` apart: the oldest, then each one saved
    `seconds` or more after the last one kept this way (AllenNLP 2.4's
    `keep_serialized_model_every_num_seconds`, counted from the oldest checkpoint on disk rather
    than from the process start, so it survives restarts). Deleting checkpoints this policy does
    not keep never changes what it keeps later.

    # Parameters

    seconds : `float`
        Minimum distance in seconds between permanently kept checkpoints, > 0.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = positive_seconds("one_per_time_window", "seconds", seconds)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        keep = []
        last_kept = None
        for c in checkpoints:
            k = last_kept is None or c.time - last_kept >= self.seconds
            if k:
                last_kept = c.time
            keep.append(k)
        return keep


@RetentionPolicy.register("any")
class KeepAny(RetentionPolicy):
    """
    Keeps a checkpoint when any of `policies` keeps it (the union).

    # Parameters

    policies : `List[RetentionPolicy]`
        At least one policy.
    """

    def __init__(self, policies: List[RetentionPolicy]) -> None:
        if not policies:
            raise ConfigurationError(
                "any: `policies` must list at least one retention policy, got []. "
                'Add one, e.g. [{"type": "most_recent_by_count", "count": 2}], or use "all".'
            )
        self.policies = list(policies)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        masks = [p.should_keep(checkpoints, now) for p in self.policies]
        return [any(mask[i] for mask in masks) for i in range(len(checkpoints))]
