"""
Save policies: *when* to save. Each answers one question from data alone (no clock, no disk):
should the checkpointer save at `current`, given where it saved before?
"""
from typing import List, Sequence

from allennlp.common import Registrable
from allennlp.common.checks import ConfigurationError

from trainer_ckpt._validate import positive_int, positive_seconds
from trainer_ckpt.checkpoint_info import CheckpointInfo


class SavePolicy(Registrable):
    """
    Decides whether to save a checkpoint. Subclass it, implement `should_save`, and
    `@SavePolicy.register("name")` it to use it in a config as `"save_policy": "name"` or
    `{"type": "name", ...}`.

    `should_save(current, previous)` gets the point just reached and the points this run saved
    at, oldest first. `previous` is never empty: its first element is the point training
    (re)started from, stamped with the (re)start time, so "since the last save" rules work from
    the first batch on, and after `--recover` without counting the time the run was dead.
    """

    #: True when decisions depend on the wall clock, so ranks of a distributed run could disagree.
    depends_on_clock = False

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        raise NotImplementedError


@SavePolicy.register("completed_epochs")
class SaveCompletedEpochs(SavePolicy):
    """Saves at the end of every epoch (AllenNLP's `save_completed_epochs: true`)."""

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.end_of_epoch


@SavePolicy.register("every_num_batches")
class SaveEveryNumBatches(SavePolicy):
    """
    Saves when `num_batches` batches have passed in this epoch since the last save in this epoch
    (AllenNLP's `save_every_num_batches`: the count restarts with every epoch).

    # Parameters

    num_batches : `int`
        Batches between saves within an epoch, >= 1.
    """

    def __init__(self, num_batches: int) -> None:
        self.num_batches = positive_int("every_num_batches", "num_batches", num_batches)

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        last = previous[-1]
        last_batches = (
            last.batches_in_epoch_completed
            if last.epochs_completed == current.epochs_completed
            else 0
        )
        return current.batches_in_epoch_completed - last_batches >= self.num_batches


@SavePolicy.register("every_num_seconds")
class SaveEveryNumSeconds(SavePolicy):
    """
    Saves when at least `seconds` have passed since the last save or the (re)start
    (AllenNLP's `save_every_num_seconds`).

    # Parameters

    seconds : `float`
        Seconds between saves, > 0.
    """

    depends_on_clock = True

    def __init__(self, seconds: float) -> None:
        self.seconds = positive_seconds("every_num_seconds", "seconds", seconds)

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.time - previous[-1].time >= self.seconds


@SavePolicy.register("any")
class SaveAny(SavePolicy):
    """
    Saves when any of `policies` says so.

    # Parameters

    policies : `List[SavePolicy]`
        At least one policy.
    """

    def __init__(self, policies: List[SavePolicy]) -> None:
        if not policies:
            raise ConfigurationError(
                "any: `policies` must list at least one save policy, got []. "
                'Add one, e.g. ["completed_epochs"], or use "never".'
            )
        self.policies = list(policies)
        self.depends_on_clock = any(p.depends_on_clock for p in self.policies)

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return any(p.should_save(current, previous) for p in self.policies)


@SavePolicy.register("never")
class SaveNever(SavePolicy):
    """Never saves (AllenNLP's checkpointer with every save option turned off)."""

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return False
