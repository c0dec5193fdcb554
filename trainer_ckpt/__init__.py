"""
trainer_ckpt: a crash-safe, registrable checkpointer for AllenNLP training loops.

Importing the package registers `DefaultCheckpointer` in AllenNLP's checkpointer registry as
`"trainer_ckpt"` (AllenNLP's own `"default"` is left alone), so a config can say
`trainer: {checkpointer: {type: "trainer_ckpt", ...}}` with `--include-package trainer_ckpt`.
"""
from trainer_ckpt import cli as _cli  # noqa: F401 (registers the `allennlp checkpoints` subcommand)
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.checkpointer import Checkpointer, DefaultCheckpointer
from trainer_ckpt.group import CheckpointerGroup
from trainer_ckpt.retention_policies import (
    KeepAll,
    KeepAllOf,
    KeepAny,
    KeepBest,
    KeepEveryNumBatches,
    KeepEveryNumEpochs,
    KeepMostRecentByAge,
    KeepMostRecentByCount,
    KeepOnePerTimeWindow,
    KeepWithinDiskQuota,
    RetentionPolicy,
)
from trainer_ckpt.save_policies import (
    SaveAll,
    SaveAny,
    SaveAt,
    SaveBestSoFar,
    SaveCompletedEpochs,
    SaveEveryNumBatches,
    SaveEveryNumEpochs,
    SaveEveryNumSeconds,
    SaveLastEpoch,
    SaveNever,
    SaveNotBefore,
    SavePolicy,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointInfo",
    "Checkpointer",
    "CheckpointerGroup",
    "DefaultCheckpointer",
    "KeepAll",
    "KeepAllOf",
    "KeepAny",
    "KeepBest",
    "KeepEveryNumBatches",
    "KeepEveryNumEpochs",
    "KeepMostRecentByAge",
    "KeepMostRecentByCount",
    "KeepOnePerTimeWindow",
    "KeepWithinDiskQuota",
    "RetentionPolicy",
    "SaveAll",
    "SaveAny",
    "SaveAt",
    "SaveBestSoFar",
    "SaveCompletedEpochs",
    "SaveEveryNumBatches",
    "SaveEveryNumEpochs",
    "SaveEveryNumSeconds",
    "SaveLastEpoch",
    "SaveNever",
    "SaveNotBefore",
    "SavePolicy",
]
