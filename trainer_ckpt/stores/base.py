"""
What every store is, for the engine: the `Store` protocol, and the `Entry` and `Listing` it
answers with. A store names a checkpoint's files, lists the complete ones (with what crashes
left), writes records, removes and quarantines; it never decides (the policies do) and never
loads (the engine does). Uses `io` only.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Tuple

from trainer_ckpt.checkpoint_info import CheckpointInfo

RNG = "rng"  # the role of the random state's file, when a face keeps it apart
Progress = Tuple[int, int]


class Listing(NamedTuple):
    complete: List[Any]  # Found (CheckpointDir) or Entry (stores); oldest first
    incomplete: List[Any]  # keys of checkpoints with some files only: an interrupted save or deletion
    stale_temps: List[str]  # temp files whose writer is gone
    orphan_records: List[Any]  # keys of records whose state files are all gone (deleted elsewhere)


class Entry(NamedTuple):
    """One complete checkpoint, as a store lists it for the engine."""

    key: Any  # the store's handle: a progress tuple (AllenNLP pairs), a name (one-file layouts)
    name: str  # for messages: `e3_b0`, `best_e3_b0`, `model_0000999`
    paths: Dict[str, str]  # role -> path of its state files (this rank's)
    record: Dict[str, Any]  # {} for files a peer wrote
    info: CheckpointInfo


def entry_info(progress: Progress, time: float, size: int, record: Dict[str, Any]) -> CheckpointInfo:
    """What policies see of a checkpoint: from its record, else from its files."""
    return CheckpointInfo(
        *progress,
        time=time,
        metrics=record.get("metrics", {}),
        total_batches_completed=record.get("total_batches_completed"),
        is_best_so_far=record.get("is_best_so_far", False),
        size_bytes=size,
        run_start=record.get("run_start"),
    )


def record(
    progress: Progress,
    time: float,
    metrics: Dict[str, float],
    total_batches_completed: Optional[int],
    is_best_so_far: bool,
) -> Dict[str, Any]:
    """What a checkpoint's JSON record holds (numbers only among the metrics; NaN stays NaN)."""
    return {
        "format": 1,
        "epochs_completed": progress[0],
        "batches_in_epoch_completed": progress[1],
        "total_batches_completed": total_batches_completed,
        "time": time,
        "metrics": {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        "is_best_so_far": is_best_so_far,
    }




class Store(Protocol):
    """
    The engine's view of a directory of checkpoints (`Pairs`, `NamedFiles`, `Mirrored`). Keys are
    the store's handles of checkpoints (a progress tuple, a name).
    """

    directory: str
    sharded: bool  # each rank writes its own files (AllenNLP's `_w{rank}` pairs)

    def list(self, own_only: bool = False) -> Listing:
        """The complete checkpoints (oldest first) and what crashes left (`own_only`: this rank's files)."""

    def files(self, key: Any) -> Dict[str, str]:
        """{role: path} of checkpoint `key`'s state files (this rank's), the main one first."""

    def record_path(self, key: Any) -> str:
        """Where checkpoint `key`'s record is (this rank's)."""

    def write_record(self, key: Any, record: Dict[str, Any]) -> None:
        """Writes checkpoint `key`'s record, last: it commits the checkpoint."""

    def remove(self, key: Any) -> None:
        """Deletes checkpoint `key`'s files (every rank's), the record first."""

    def quarantine(self, key: Any) -> List[str]:
        """Moves checkpoint `key`'s files into `corrupt/`; returns the names moved."""

    def names(self, key: Any) -> List[str]:
        """Checkpoint `key`'s file names (every rank's), the record first."""

    def owns(self, base: str) -> bool:
        """Whether `base` is one of this layout's names: nothing else is ever deleted."""

    def label(self, key: Any) -> str:
        """Checkpoint `key` in messages: `e3_b0`, `model_0000999`."""

    @staticmethod
    def order(entry: Entry) -> Any:
        """The sort key of entries, oldest first."""
