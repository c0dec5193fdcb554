"""
Safe loading and verification, below the stores: a file's size and CRC32 checked against its
record before anything is unpickled, then `torch.load(weights_only=True)`; what refuses to load
is a `BadCheckpoint` (unusable bytes) or an `UnsafeCheckpoint` (types not allowed, nothing run).
`read` is the one way a checkpoint's files come back, for the engine and every face alike.
"""
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional

import torch

from trainer_ckpt.io import sharded
from trainer_ckpt.io.checks import BadCheckpoint, UnsafeCheckpoint, refused_types, verify_file
from trainer_ckpt.io.settings import allowing

__all__ = ["BadCheckpoint", "UnsafeCheckpoint", "allowing", "load", "numpy_types", "read", "refused_types", "verify"]


def read(
    paths: Mapping[str, str], expected: Mapping[str, Dict[str, Any]], templates: Optional[Mapping[str, Any]] = None,
    collective: bool = False, checked: bool = False,
) -> Dict[str, Any]:
    """
    Read, verify, load: {role: object} of a checkpoint's files ({role: path}). Each is checked
    against its record (`expected[role]`; a file without one, a peer's, loads unchecked), then
    loaded: a file with `weights_only=True` onto the CPU, a directory of sharded state into
    `templates[role]` (see `sharded.load`; `collective`: every rank at once). `checked`: the
    directories were verified already (their parts are many; a file is checked every time, which
    brings its pages into the cache its load maps). Raises BadCheckpoint or UnsafeCheckpoint;
    wrap it in `allowing(...)` for more types than tensors and containers.
    """
    loaded = {}
    for role, path in paths.items():
        record = expected.get(role)
        if record is None or "parts" not in record:
            loaded[role] = load(path, record)
            continue
        if not checked:
            sharded.verify(path, record)
        loaded[role] = sharded.load(path, (templates or {}).get(role), collective)
    return loaded


def load(path: str, expected: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """
    Loads a state file onto the CPU (the trainer moves tensors to its device when it restores)
    with `weights_only=True`. With `expected` (the record's size and CRC32), the bytes are
    checked before anything is unpickled. The tensors are memory-mapped from the file, whose
    pages the check has just brought into the page cache: one read from disk, no extra copy.
    """
    if expected is not None:
        verify(path, expected)
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch's legacy format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        refused = refused_types(e)
        if refused is not None:
            raise UnsafeCheckpoint(f"{os.path.basename(path)}: {refused}") from e
        raise BadCheckpoint(f"{os.path.basename(path)} does not load: {e}") from e
    except OSError as e:
        raise BadCheckpoint(f"cannot read {os.path.basename(path)}: {e}") from e
    except Exception as e:  # a torn zip archive, a truncated pickle, ...
        raise BadCheckpoint(f"{os.path.basename(path)} does not load: {type(e).__name__}: {e}") from e


def verify(path: str, expected: Dict[str, Any]) -> None:
    """
    Checks a file, or a directory of sharded state, against its record; raises BadCheckpoint. A
    file that another writer has put in its place since (another inode, written later, other
    bytes: a peer's checkpointer saving under the same name) is no longer the one the record
    describes: it is a peer's file, and verified as those are, by loading it. A file changed in
    place fails, and so does a copy whose bytes differ from its record.
    """
    if "parts" in expected:
        sharded.verify(path, expected)
        return
    try:
        verify_file(path, expected)
    except BadCheckpoint:
        if not replaced(path, expected):
            raise
        load(path)


def replaced(path: str, expected: Dict[str, Any]) -> bool:
    """
    Whether the file at `path` was put there by another writer after the one its record describes:
    another inode, written later. A copy keeps its record's claim (a download from a bucket is
    given the recorded mtime; `cp -p`, `rsync -a` keep it): its bytes are checked against it.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return ("inode" in expected and "mtime_ns" in expected and stat.st_ino != expected["inode"]
            and stat.st_mtime_ns > expected["mtime_ns"])


def numpy_types() -> List[Any]:
    """
    numpy's array, scalar and dtype reconstruction, for `allowing`: what checkpoints hold besides
    tensors where numpy is involved (ignite's DeterministicEngine random state, mmengine's metrics).
    Data, not code: every other global is still refused.
    """
    import numpy

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(numpy.dtype(t)) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                             "uint8", "uint16", "uint32", "uint64", "bool")]
    return [_reconstruct, scalar, numpy.ndarray, numpy.dtype, *dtypes]
