"""
Save policies: *when* to save. Each answers one question from data alone (no clock, no disk):
should the checkpointer save at `current`, given where it saved before?
"""
from typing import List, Optional, Sequence

from trainer_ckpt.policies.registry import CheckedRegistrable, ConfigurationError
from trainer_ckpt.policies.registry import flag, int_list, non_negative_int, positive_int, positive_seconds
from trainer_ckpt.checkpoint_info import CheckpointInfo


class SavePolicy(CheckedRegistrable):
    """
    Decides whether to save a checkpoint. Subclass it, implement `should_save`, and
    `@SavePolicy.register("name")` it to use it in a config as `"save_policy": "name"` or
    `{"type": "name", ...}`.

    `should_save(current, previous)` gets the point just reached and the points this run saved
    at, oldest first. `previous` is never empty: its first element is the point training
    (re)started from, stamped with the (re)start time, so "since the last save" rules work from
    the first batch on, and after `--recover` without counting the time the run was dead.
    """

    #: True when decisions depend on the wall clock, so ranks of a distributed run could disagree:
    #: there rank 0 decides for all (trainer_ckpt.core.distributed: one broadcast per call).
    depends_on_clock = False
    kind = "save policy"
    example = '"completed_epochs" or {"type": "every_num_batches", "num_batches": 100}'

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        raise NotImplementedError


def _total_batches(policy: str, current: CheckpointInfo) -> int:
    if current.total_batches_completed is None:
        raise ValueError(
            f"{policy}: needs the number of batches trained since the start of the run, got a "
            "trainer that does not report it (`_total_batches_completed`). Count batches per epoch "
            "instead (every_num_batches with restart_each_epoch: true)."
        )
    return current.total_batches_completed


@SavePolicy.register("completed_epochs")
class SaveCompletedEpochs(SavePolicy):
    """Saves at the end of every epoch (AllenNLP's `save_completed_epochs: true`)."""

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.end_of_epoch


@SavePolicy.register("every_num_epochs")
class SaveEveryNumEpochs(SavePolicy):
    """
    Saves at the end of every `num_epochs`-th epoch: after epochs N, 2N, ... (mmengine's
    `interval` with `by_epoch`, ignite's `EPOCH_COMPLETED(every=N)`).

    # Parameters

    num_epochs : `int`
        >= 1.
    """

    def __init__(self, num_epochs: int) -> None:
        self.num_epochs = positive_int("every_num_epochs", "num_epochs", num_epochs)

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.end_of_epoch and current.epochs_completed % self.num_epochs == 0


@SavePolicy.register("every_num_batches")
class SaveEveryNumBatches(SavePolicy):
    """
    Saves every `num_batches` batches. By default the count restarts with every epoch, as
    AllenNLP's `save_every_num_batches` does: a save when `num_batches` batches have passed since
    the last save in this epoch. With `restart_each_epoch: false` batches are counted over the
    whole run (detectron2's `period`, ignite's `every=N`, mmengine's `by_epoch=False`): a save
    after batches N, 2N, 3N... of the run, wherever the epochs end.

    # Parameters

    num_batches : `int`
        >= 1.
    restart_each_epoch : `bool`, optional (default=`True`)
    """

    def __init__(self, num_batches: int, restart_each_epoch: bool = True) -> None:
        self.num_batches = positive_int("every_num_batches", "num_batches", num_batches)
        self.restart_each_epoch = flag("every_num_batches", "restart_each_epoch", restart_each_epoch)

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        if not self.restart_each_epoch:
            # The epoch-end call repeats the last batch's count; it is not a new batch.
            total = _total_batches("every_num_batches", current)
            return not current.end_of_epoch and total % self.num_batches == 0
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


@SavePolicy.register("at")
class SaveAt(SavePolicy):
    """
    Saves at explicit points (ignite's `once=[...]`): at the end of the listed epochs, and after
    the listed batch counts of the run.

    # Parameters

    epochs : `List[int]`, optional (default=`[]`)
        Epoch numbers, counted from 1: `[1]` saves when the first epoch ends.
    batches : `List[int]`, optional (default=`[]`)
        Batches since the start of the run.
    """

    def __init__(self, epochs: Optional[List[int]] = None, batches: Optional[List[int]] = None) -> None:
        self.epochs = set(int_list("at", "epochs", epochs))
        self.batches = set(int_list("at", "batches", batches))
        if not self.epochs and not self.batches:
            raise ConfigurationError(
                f"at: needs `epochs` or `batches`, got epochs={epochs!r}, batches={batches!r}. "
                "List the points to save at, e.g. epochs: [1, 10]."
            )

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        if current.end_of_epoch:
            return current.epochs_completed in self.epochs
        return bool(self.batches) and _total_batches("at", current) in self.batches


@SavePolicy.register("not_before")
class SaveNotBefore(SavePolicy):
    """
    Lets `policy` save only once training has passed a point (mmengine's `save_begin`, ignite's
    `after`): `epochs` epochs completed and `batches` batches trained in the run.

    # Parameters

    policy : `SavePolicy`
    epochs : `int`, optional (default=`0`)
    batches : `int`, optional (default=`0`)
    """

    def __init__(self, policy: SavePolicy, epochs: int = 0, batches: int = 0) -> None:
        self.policy = SavePolicy.build("not_before", "policy", policy)
        self.epochs = non_negative_int("not_before", "epochs", epochs)
        self.batches = non_negative_int("not_before", "batches", batches)
        self.depends_on_clock = self.policy.depends_on_clock

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        if current.epochs_completed < self.epochs:
            return False
        if self.batches and _total_batches("not_before", current) < self.batches:
            return False
        return self.policy.should_save(current, previous)


@SavePolicy.register("last_epoch")
class SaveLastEpoch(SavePolicy):
    """
    Saves at the end of the last epoch the trainer runs: `num_epochs`, or the epoch after which
    early stopping ends training (mmengine's `save_last`, detectron2's `model_final`).
    """

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.training_ends


@SavePolicy.register("best_so_far")
class SaveBestSoFar(SavePolicy):
    """
    Saves at the end of an epoch whose validation is the best so far, by the trainer's
    `validation_metric` (the checkpoint `best.th` is linked to).
    """

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return current.end_of_epoch and current.is_best_so_far


class _Combination(SavePolicy):
    name = ""

    def __init__(self, policies: List[SavePolicy]) -> None:
        if not isinstance(policies, (list, tuple)) or not policies:
            raise ConfigurationError(
                f"{self.name}: `policies` must list at least one save policy, got {policies!r}. "
                'Add one, e.g. ["completed_epochs"], or use "never".'
            )
        self.policies = [SavePolicy.build(self.name, f"policies[{i}]", p) for i, p in enumerate(policies)]
        self.depends_on_clock = any(p.depends_on_clock for p in self.policies)


@SavePolicy.register("any")
class SaveAny(_Combination):
    """
    Saves when any of `policies` says so.

    # Parameters

    policies : `List[SavePolicy]`
        At least one policy.
    """

    name = "any"

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return any(p.should_save(current, previous) for p in self.policies)


@SavePolicy.register("all_of")
class SaveAll(_Combination):
    """
    Saves when all of `policies` say so.

    # Parameters

    policies : `List[SavePolicy]`
        At least one policy.
    """

    name = "all_of"

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return all(p.should_save(current, previous) for p in self.policies)


@SavePolicy.register("never")
class SaveNever(SavePolicy):
    """Never saves (AllenNLP's checkpointer with every save option turned off)."""

    def should_save(self, current: CheckpointInfo, previous: Sequence[CheckpointInfo]) -> bool:
        return False


# Named (in messages, `describe()`, pickles) by their 0.1 path, `trainer_ckpt.save_policies`, which re-exports them.
for _policy in list(globals().values()):
    if isinstance(_policy, type) and issubclass(_policy, SavePolicy) and _policy.__module__ == __name__:
        _policy.__module__ = "trainer_ckpt.save_policies"
