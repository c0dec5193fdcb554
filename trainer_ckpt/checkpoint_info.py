import dataclasses
from typing import Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True, order=True)
class CheckpointInfo:
    """
    The one record that policies read: a point in training, when it was reached, and what was
    known there. Ordered by progress, `(epochs_completed, batches_in_epoch_completed)`, AllenNLP's
    own ordering key; the other fields do not take part in comparisons.

    # Parameters

    epochs_completed : `int`
    batches_in_epoch_completed : `int`
        `0` means "at the end of epoch `epochs_completed`".
    time : `float`, optional (default=`0.0`)
        When the point was reached (or the checkpoint saved), in seconds since the epoch.
    metrics : `Dict[str, float]`, optional (default=`{}`)
        The validation metrics measured at this very point (names as in the trainer's
        `validation_metric`, e.g. `accuracy`); empty where no validation ran, i.e. inside epochs.
    total_batches_completed : `int`, optional (default=`None`)
        Batches trained since the start of the run; None where unknown (AllenNLP's own files).
    is_best_so_far : `bool`, optional (default=`False`)
        The trainer's metric tracker found this point the best so far (the one `best.th` holds).
    training_ends : `bool`, optional (default=`False`)
        This is the end of the last epoch the trainer will run (`num_epochs`, or early stopping).
    size_bytes : `int`, optional (default=`0`)
        On disk: the checkpoint's size (model + training state).
    run_start : `float`, optional (default=`None`)
        When the run that wrote the checkpoint first started (kept across restarts and
        `--recover`); None where unknown (AllenNLP's own files).
    """

    epochs_completed: int
    batches_in_epoch_completed: int
    time: float = dataclasses.field(default=0.0, compare=False)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    total_batches_completed: Optional[int] = dataclasses.field(default=None, compare=False)
    is_best_so_far: bool = dataclasses.field(default=False, compare=False)
    training_ends: bool = dataclasses.field(default=False, compare=False)
    size_bytes: int = dataclasses.field(default=0, compare=False)
    run_start: Optional[float] = dataclasses.field(default=None, compare=False)

    @property
    def end_of_epoch(self) -> bool:
        return self.batches_in_epoch_completed == 0

    @property
    def progress(self) -> Tuple[int, int]:
        return self.epochs_completed, self.batches_in_epoch_completed

    @property
    def name(self) -> str:
        return label(self.progress)


def label(progress: Tuple[int, int]) -> str:
    """A point in training as checkpoints are named and logged: `e3_b0` (epochs and batches completed)."""
    return f"e{progress[0]}_b{progress[1]}"
