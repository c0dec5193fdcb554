import dataclasses
from typing import Dict


@dataclasses.dataclass(frozen=True, order=True)
class CheckpointInfo:
    """
    The one record that policies read: a point in training and when it was reached.

    Ordered by progress, `(epochs_completed, batches_in_epoch_completed)`, AllenNLP's own
    ordering key; `time` and `metrics` do not take part in comparisons.
    `batches_in_epoch_completed == 0` means "at the end of epoch `epochs_completed`".
    """

    epochs_completed: int
    batches_in_epoch_completed: int
    time: float = dataclasses.field(default=0.0, compare=False)
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def end_of_epoch(self) -> bool:
        return self.batches_in_epoch_completed == 0

    @property
    def progress(self):
        return self.epochs_completed, self.batches_in_epoch_completed
