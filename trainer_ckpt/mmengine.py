"""
A drop-in for mmengine's `CheckpointHook` on trainer_ckpt's engine: in a config, change
`checkpoint=dict(type="CheckpointHook", ...)` to `checkpoint=dict(type=CheckpointHook, ...)` with
`from trainer_ckpt.mmengine import CheckpointHook`, or to `type="TrainerCkptCheckpointHook"` with
`custom_imports=dict(imports=["trainer_ckpt.mmengine"])`; nothing else.

Same arguments, semantics, files and contents as mmengine 0.10.7 (the class subclasses mmengine's):
`epoch_{N}.pth` / `iter_{N}.pth`, `best_{metric}_*.pth`, `last_checkpoint`, published files, and
`meta`, `state_dict`, `optimizer`, `param_schedulers`, `message_hub` inside. Beyond mmengine: every
file (`last_checkpoint` too) is written crash-safely, and a replaced checkpoint is deleted only once
its successor is committed; a hidden record (`.{file}.json`: sizes, CRC32s) and the random state
(`.{file}.rng`) go beside each checkpoint; `Runner(resume=True)` resumes from the newest checkpoint
that verifies, falling back with a WARNING, loaded with `weights_only=True` and exactly the types
mmengine's checkpoints need (mmengine 0.10.7's own resume fails on torch >= 2.6: "Weights only load
failed"); the random state goes back on resume. Opt-in keywords: background saves, a retention
policy, `safe_globals`. `backend_args` other than the local disk are refused (not supported yet).
"""
import sys

from trainer_ckpt.faces.lazy import lazy_face

__all__ = ["CheckpointHook", "LAYOUT", "mmengine_safe_globals"]


__getattr__, __dir__ = lazy_face("_mmengine.hook", __all__)


# Imported by mmengine (`custom_imports`): register `TrainerCkptCheckpointHook` now. Imported
# otherwise (AllenNLP's `--include-package trainer_ckpt` imports every submodule): wait for first
# use, so that no mmengine needs to be installed.
if sys.modules.get("mmengine") is not None:
    from trainer_ckpt.faces._mmengine import hook  # noqa: F401
