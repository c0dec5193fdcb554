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

`CheckpointIO` is for every other save Lightning makes: `Trainer(plugins=[CheckpointIO()])` (or
`SingleDeviceStrategy(..., checkpoint_io=CheckpointIO())`) writes each file the strategy saves (any
callback's, a manual `trainer.save_checkpoint(path)`) durably with a hidden record beside it, and
checks a file of ours against its record before loading it (one truncated or altered raises an error
naming the file and the mismatch; Lightning's own files, without a record, load as Lightning loads
them), with `weights_only` loading of Lightning's own types plus `safe_globals=[...]`.
`CheckpointIO(background=True)` is the async variant: the checkpoint is copied once on the training
thread and written on a worker; the next save, a load, a removal and `teardown` wait for it and raise
its error if it failed.
"""
from trainer_ckpt.faces.lazy import lazy_face

__all__ = ["ModelCheckpoint", "CheckpointIO", "LAYOUT"]


__getattr__, __dir__ = lazy_face("_lightning", __all__)
