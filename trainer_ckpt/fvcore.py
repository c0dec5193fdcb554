"""
A drop-in for `fvcore.common.checkpoint` (and so for `detectron2.checkpoint`) on trainer_ckpt's
engine: change `from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer` to
`from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer` and nothing else.

Same API, semantics, files and log messages as fvcore 0.1.5 (these classes subclass fvcore's):
`{name}.pth` holds exactly `{"model": ..., <checkpointables>..., <extra kwargs>...}`, and
`last_checkpoint` names the newest. Beyond fvcore: every file (the pointer too) is written
crash-safely; a hidden record (`.{name}.pth.json`, sizes and CRC32s) and the random state
(`.{name}.pth.rng`) go beside each checkpoint; `resume_or_load` verifies and falls back to the
newest good checkpoint with a warning; everything loads with `weights_only=True`; `max_to_keep`
counts the checkpoints already on disk (fvcore only counts its own process' saves); and, as
keywords, background saves, restoring the random state on resume, and our policies.
"""
from trainer_ckpt.faces.lazy import lazy_face

__all__ = ["Checkpointer", "PeriodicCheckpointer", "LAYOUT"]


__getattr__, __dir__ = lazy_face("_fvcore.checkpointer", __all__)
