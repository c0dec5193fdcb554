import os
from typing import Any, List, Optional, Tuple, Union

from allennlp.common import Lazy
from allennlp.common.checks import ConfigurationError
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer
from allennlp.training.trainer import Trainer, TrainerCheckpoint

from trainer_ckpt.faces.allennlp.checkpointer import Checkpointer, DefaultCheckpointer


@AllenNlpCheckpointer.register("trainer_ckpt_group")
@Checkpointer.register("group")
class CheckpointerGroup(Checkpointer):
    """
    Several checkpointers in one serialization directory, each with its own `filename_prefix`:
    say, a periodic one that `--recover` resumes from and a "best" one. The first is the
    trainer's: `--recover` restores its newest checkpoint and `best.th` is linked to its files;
    the others see every call too, and restart their cadence from the same point.

    # Parameters

    checkpointers : `List[Checkpointer]`
        Checkpointer configs (`type` defaults to `"default"`); at least one, prefixes distinct.
    read_only : `bool`, optional (default=`False`)
        Passed to every member.
    """

    def __init__(
        self,
        serialization_dir: Union[str, os.PathLike],
        checkpointers: List[Lazy[Checkpointer]],
        read_only: bool = False,
    ) -> None:
        self.members: List[Checkpointer] = []
        super().__init__(serialization_dir)
        if not checkpointers:
            raise ConfigurationError(
                "group: `checkpointers` must list at least one checkpointer, got []. "
                'Add one, e.g. [{"save_every_num_batches": 100}].'
            )
        self.members = [
            c.construct(serialization_dir=self._serialization_dir, read_only=read_only) for c in checkpointers
        ]
        prefixes = [m._store.prefix for m in self.members if isinstance(m, DefaultCheckpointer)]
        if len(set(prefixes)) != len(prefixes):
            raise ConfigurationError(
                f"group: every checkpointer needs its own `filename_prefix`, got {prefixes!r}. "
                'Give all but one a prefix, e.g. "best_".'
            )

    @property  # type: ignore[override]
    def state_is_sharded(self) -> bool:
        return self._sharded

    @state_is_sharded.setter
    def state_is_sharded(self, value: bool) -> None:
        self._sharded = value  # the trainer sets it on us; the members write the files
        for member in self.members:
            member.state_is_sharded = value

    def maybe_save_checkpoint(
        self, trainer: Trainer, num_epochs_completed: int, num_batches_in_epoch_completed: int
    ) -> bool:
        saved = [m.maybe_save_checkpoint(trainer, num_epochs_completed, num_batches_in_epoch_completed) for m in self.members]
        return saved[0]

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        for member in self.members:
            member.save_checkpoint(*args, **kwargs)

    def find_latest_checkpoint(self) -> Optional[Tuple[str, str]]:
        return self.members[0].find_latest_checkpoint()

    def load_checkpoint(self) -> Optional[TrainerCheckpoint]:
        checkpoint = self.members[0].load_checkpoint()
        if checkpoint is not None:
            state = checkpoint.trainer_state
            progress = (state.get("epochs_completed", 0), state.get("batches_in_epoch_completed", 0))
            for member in self.members[1:]:
                if isinstance(member, DefaultCheckpointer):
                    member.restart_at(progress, run_start=getattr(self.members[0], "run_start", None))
        return checkpoint
