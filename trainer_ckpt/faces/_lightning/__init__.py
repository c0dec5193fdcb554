"""
The Lightning face: `callback` (`ModelCheckpoint`, a subclass of Lightning's, on the engine) and
`io` (`CheckpointIO`, for every save Lightning makes). Lightning's internals are read only here.
"""
from trainer_ckpt.faces._lightning.callback import LAYOUT, ModelCheckpoint
from trainer_ckpt.faces._lightning.io import CheckpointIO

__all__ = ["ModelCheckpoint", "CheckpointIO", "LAYOUT"]
