"""
Where checkpoints live and how their files are named, for the engine: the `Store` protocol with
`Entry` and `Listing` (`base`), AllenNLP's pairs (`pairs`), one-file layouts of the other faces
(`named`), and any of them mirrored to object storage (`mirrored`, fsspec imported on use).
Stores name, list, write records, remove and quarantine; they never decide and never load.
Uses `io` only.
"""
from trainer_ckpt.stores.base import RNG, Entry, Listing, Progress, Store, entry_info, record
from trainer_ckpt.stores.named import Layout, NamedFiles, owned_by
from trainer_ckpt.stores.pairs import MODEL, RECORD, TRAINING, CheckpointDir, Found, Pairs, StateFile

__all__ = [
    "RNG", "Entry", "Listing", "Progress", "Store", "entry_info", "record",
    "Layout", "NamedFiles", "owned_by",
    "MODEL", "RECORD", "TRAINING", "CheckpointDir", "Found", "Pairs", "StateFile",
]
