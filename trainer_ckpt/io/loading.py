"""
Safe loading and verification, below the stores: a file's size and CRC32 checked against its
record before anything is unpickled, then `torch.load(weights_only=True)`; what refuses to load
is a `BadCheckpoint` (unusable bytes) or an `UnsafeCheckpoint` (types not allowed, nothing run).
"""
import os
import pickle
from typing import Any, Dict, List, Optional

import torch

from trainer_ckpt.io.fastio import file_crc
from trainer_ckpt.io.settings import allowing  # noqa: F401 (part of safe loading: `loading.allowing`)

class BadCheckpoint(Exception):
    """A checkpoint file that cannot be used: truncated, altered, missing, unreadable."""


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


class UnsafeCheckpoint(Exception):
    """A state file holds types that `weights_only` loading refuses: it was not unpickled."""


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


def refused_types(error: BaseException) -> Optional[str]:
    """
    What torch's `weights_only` refusal names (the `GLOBAL ...` it would not load), when `error`
    is one; else None. torch's message is long and suggests weights_only=False: only this is kept.
    """
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    return " ".join(line.strip() for line in text.splitlines() if "GLOBAL" in line) or text


def verify(path: str, expected: Dict[str, Any]) -> None:
    """Checks a file's size, then its CRC32, against its record; raises BadCheckpoint."""
    if "parts" in expected:  # a directory of sharded state
        from trainer_ckpt.io import sharded

        return sharded.verify(path, expected)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise BadCheckpoint(f"{os.path.basename(path)} is missing: {e}") from e
    if size != expected["size"]:
        raise BadCheckpoint(_mismatch(path, size, None, expected))
    size, crc = file_crc(path)
    problem = _mismatch(path, size, crc, expected)
    if problem:
        raise BadCheckpoint(problem)


def _mismatch(path: str, size: int, crc: Optional[int], expected: Dict[str, Any]) -> str:
    name = os.path.basename(path)
    if size != expected["size"]:
        return f"{name} has {size} bytes, its record says {expected['size']} (truncated or overwritten)"
    if crc is not None and crc != expected["crc32"]:
        return f"{name} has CRC32 {crc:08x}, its record says {expected['crc32']:08x} (its content changed)"
    return ""


