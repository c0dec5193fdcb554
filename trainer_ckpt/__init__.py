"""
trainer_ckpt: a crash-safe, registrable checkpointer for AllenNLP training loops.

Importing the package registers `DefaultCheckpointer` in AllenNLP's checkpointer registry as
`"trainer_ckpt"` (AllenNLP's own `"default"` is left alone), so a config can say
`trainer: {checkpointer: {type: "trainer_ckpt", ...}}` with `--include-package trainer_ckpt`.
"""
import importlib
import sys

from trainer_ckpt.checkpoint_info import CheckpointInfo

__version__ = "0.1.0"

# Imported on first use, so that `import trainer_ckpt` (the CLI, the ignite/mmengine/fvcore faces)
# does not pay for AllenNLP's training stack: name -> module.
_LAZY = {
    "Checkpointer": "checkpointer", "DefaultCheckpointer": "checkpointer", "CheckpointerGroup": "group",
    **{name: "retention_policies" for name in (
        "KeepAll", "KeepAllOf", "KeepAny", "KeepBest", "KeepEveryNumBatches", "KeepEveryNumEpochs",
        "KeepMostRecentByAge", "KeepMostRecentByCount", "KeepOnePerTimeWindow", "KeepWithinDiskQuota",
        "RetentionPolicy")},
    **{name: "save_policies" for name in (
        "SaveAll", "SaveAny", "SaveAt", "SaveBestSoFar", "SaveCompletedEpochs", "SaveEveryNumBatches",
        "SaveEveryNumEpochs", "SaveEveryNumSeconds", "SaveLastEpoch", "SaveNever", "SaveNotBefore", "SavePolicy")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"trainer_ckpt.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'trainer_ckpt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# Inside AllenNLP (a `.allennlp_plugins` file imports this package alone, after all of AllenNLP):
# register the checkpointers and the `allennlp checkpoints` subcommand now.
if "allennlp.training" in sys.modules or "allennlp.commands" in sys.modules:
    from trainer_ckpt import cli as _cli, group as _group  # noqa: F401


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
