"""
A drop-in for pytorch-ignite's `Checkpoint` and `DiskSaver` on trainer_ckpt's engine: change
`from ignite.handlers import Checkpoint, DiskSaver` to `from trainer_ckpt.ignite import
Checkpoint, DiskSaver` and nothing else.

Same API, semantics, file names and contents as ignite 0.5.5 (these classes subclass ignite's):
`Checkpoint` decides names, scores, ties and what to keep exactly as ignite does, and a single
object is saved bare. Beyond ignite, `DiskSaver` writes every file durably (temp file, fsync,
rename; temp files of a killed run are removed at the next start), and puts a hidden record
(`.{file}.json`: sizes, CRC32s, progress, metrics) and the random state (`.{file}.rng`) beside
each checkpoint; a checkpoint that replaces an older one is committed before the older one is
deleted (ignite deletes first: a kill in between leaves no checkpoint with `n_saved=1`).
`latest_checkpoint(dirname)` finds the newest checkpoint that verifies; `Checkpoint.load_objects`
verifies a file against its record, loads with `weights_only=True` and, when `to_load` holds the
ignite `Engine`, puts the random state back when the run resumes. Opt-in keywords: background
saves, our save and retention policies, `safe_globals`.
"""
from trainer_ckpt.faces.lazy import lazy_face

__all__ = ["Checkpoint", "DiskSaver", "latest_checkpoint", "LAYOUT"]


__getattr__, __dir__ = lazy_face("_ignite", __all__)
