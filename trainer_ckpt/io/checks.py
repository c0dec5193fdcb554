"""
What makes a checkpoint unusable, below loading and sharded state: the two errors, a file's bytes
checked against its record (size, then CRC32), and the part of torch's `weights_only` refusal
worth showing.
"""
import os
from typing import Any, Dict, Optional

from trainer_ckpt.io.fastio import file_crc


class BadCheckpoint(Exception):
    """A checkpoint file that cannot be used: truncated, altered, missing, unreadable."""


class UnsafeCheckpoint(Exception):
    """A state file holds types that `weights_only` loading refuses: it was not unpickled."""


def verify_file(path: str, expected: Dict[str, Any]) -> None:
    """Checks one file's size, then its CRC32, against its record; raises BadCheckpoint."""
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


def refused_types(error: BaseException) -> Optional[str]:
    """
    What torch's `weights_only` refusal names (the `GLOBAL ...` it would not load), when `error`
    is one; else None. torch's message is long and suggests weights_only=False: only this is kept.
    """
    text = str(error)
    if "Weights only load failed" not in text:
        return None
    return " ".join(line.strip() for line in text.splitlines() if "GLOBAL" in line) or text
