import os
from typing import Any, List, Optional, Tuple, Union

from allennlp.common import Lazy
from allennlp.common.checks import ConfigurationError
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer
from allennlp.training.trainer import Trainer, TrainerCheckpoint

from trainer_ckpt.core import preemption
from trainer_ckpt.faces.allennlp.checkpointer import Checkpointer, DefaultCheckpointer, _Listener, _MetricsListener, _stop
from trainer_ckpt.faces.allennlp.flat_keys import Flag
from trainer_ckpt.policies.registry import flag


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
    save_on_signals : `List[Union[str, int]]`, optional (default=`None`)
        As the default checkpointer's, for the whole group: on one of these signals every default
        member saves at the batch being trained (a checkpointer of your own registered type only
        when its policy says so; the first member is what `--recover` resumes from), then the
        process exits with 128 + the signal's number. Give it to the group, not to members.
    exit_on_signal : `bool`, optional (default=`True`)
        `false`: after those saves, training goes on.
    """

    def __init__(
        self,
        serialization_dir: Union[str, os.PathLike],
        checkpointers: List[Lazy[Checkpointer]],
        read_only: bool = False,
        save_on_signals: Any = None,
        exit_on_signal: Flag = True,
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
        signals = preemption.parse("group", "save_on_signals", save_on_signals, ConfigurationError)
        exit_on_signal = flag("group", "exit_on_signal", exit_on_signal)
        listening = [i for i, m in enumerate(self.members) if getattr(getattr(m, "_preemption", None), "signals", ())]
        if listening:
            for member in self.members:
                if isinstance(member, DefaultCheckpointer):
                    member.close()
            raise ConfigurationError(
                f"group: `save_on_signals` belongs to the group, got it in checkpointers {listening}. Move it up to "
                "the group, so that every checkpointer saves before the process exits."
            )
        self._preemption = _Listener(signals, exit_on_signal)
        self._listener = _MetricsListener()  # stops listening to signals when training ends
        self._listener.on_training_end = self._preemption.close

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
        self._listener.attach(trainer)
        signum = self._preemption.requested()  # a collective in distributed runs: every rank, every call
        saved = [
            m._save_point(trainer, num_epochs_completed, num_batches_in_epoch_completed, now=signum is not None)
            if isinstance(m, DefaultCheckpointer)
            else m.maybe_save_checkpoint(trainer, num_epochs_completed, num_batches_in_epoch_completed)
            for m in self.members
        ]
        if signum is not None:
            _stop(self._preemption, signum, num_batches_in_epoch_completed == 0, self.drain,
                  getattr(self.members[0], "_resume", None))
        return saved[0]

    def drain(self) -> None:
        """Waits for every member's save in flight and its upload."""
        for member in self.members:
            if isinstance(member, DefaultCheckpointer):
                member.drain()

    def close(self) -> None:
        """Stops listening to `save_on_signals` and closes every member that can be closed."""
        self._preemption.close()
        for member in self.members:
            if isinstance(member, DefaultCheckpointer):
                member.close()

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
