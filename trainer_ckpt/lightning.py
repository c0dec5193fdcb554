"""
A drop-in for PyTorch Lightning's `ModelCheckpoint` on trainer_ckpt's engine: change
`from lightning.pytorch.callbacks import ModelCheckpoint` to `from trainer_ckpt.lightning import
ModelCheckpoint` and nothing else.

The same constructor, file names and files kept as Lightning 2.6's (the class subclasses it).
Beyond Lightning, every file the callback writes is durable (temp file, fsync, rename) with a
hidden record (`.{file}.json`: size, CRC32, step, metrics) and the random state (`.{file}.rng`)
beside it, and `trainer.fit(model, ckpt_path="last")` resumes from the newest checkpoint that
verifies, moving a truncated or altered one into `corrupt/` with a WARNING (Lightning picks the
newest `last*.ckpt` by mtime and fails on it). Give the callback a `dirpath`: without one,
Lightning looks for "last" in the logger's next, empty version folder.
"""
from trainer_ckpt.faces.lazy import lazy_face

__all__ = ["ModelCheckpoint", "LAYOUT"]


__getattr__, __dir__ = lazy_face("_lightning", __all__)
