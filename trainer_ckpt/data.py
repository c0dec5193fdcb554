"""The fvcore face's resumable loader (0.1's import path): see `trainer_ckpt.faces._fvcore.loader`."""
from trainer_ckpt.faces._fvcore.loader import ResumableLoader

__all__ = ["ResumableLoader"]
