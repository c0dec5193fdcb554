"""
trainer_ckpt: a crash-safe, registrable checkpointer for AllenNLP training loops (and faces for
fvcore/detectron2, pytorch-ignite and mmengine).

Importing the package registers `DefaultCheckpointer` in AllenNLP's checkpointer registry as
`"trainer_ckpt"` (and `CheckpointerGroup` as `"trainer_ckpt_group"`; AllenNLP's own `"default"` is
left alone), whether AllenNLP is imported before or after it, so a config can say
`trainer: {checkpointer: {type: "trainer_ckpt", ...}}`. Importing it does not import AllenNLP: where
AllenNLP is not imported yet, the registration runs when it is (see `trainer_ckpt.faces.registration`).
"""
import importlib

from trainer_ckpt.faces import registration as _allennlp_hook
from trainer_ckpt.checkpoint_info import CheckpointInfo

__version__ = "0.2.0"

# Imported on first use, so that `import trainer_ckpt` (the CLI, the ignite/mmengine/fvcore faces)
# does not pay for AllenNLP's training stack: name -> module.
_LAZY = {
    "Checkpointer": "faces.allennlp.checkpointer", "DefaultCheckpointer": "faces.allennlp.checkpointer",
    "CheckpointerGroup": "faces.allennlp.group", "ConfigurationError": "policies.registry",
    **{name: "policies.retention" for name in (
        "KeepAll", "KeepAllOf", "KeepAny", "KeepBest", "KeepEveryNumBatches", "KeepEveryNumEpochs",
        "KeepMostRecentByAge", "KeepMostRecentByCount", "KeepOnePerTimeWindow", "KeepWithinDiskQuota",
        "RetentionPolicy")},
    **{name: "policies.save" for name in (
        "SaveAll", "SaveAny", "SaveAt", "SaveBestSoFar", "SaveCompletedEpochs", "SaveEveryNumBatches",
        "SaveEveryNumEpochs", "SaveEveryNumSeconds", "SaveLastEpoch", "SaveNever", "SaveNotBefore", "SavePolicy")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"trainer_ckpt.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'trainer_ckpt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# Registers the checkpointers (and the `allennlp checkpoints` subcommand) in AllenNLP now if it is
# imported (`--include-package`, a `.allennlp_plugins` file), else as soon as it is.
_allennlp_hook.install()


__all__ = [
    "CheckpointInfo",
    "Checkpointer",
    "CheckpointerGroup",
    "ConfigurationError",
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
