"""
Everything that touches checkpoint files: AllenNLP's names, parsing (of basenames only), crash-safe
writes, listing complete checkpoints, and deleting.

A crash at any instant leaves either the old set of checkpoints or the old set plus one complete
new one: every file is written to a hidden temp file in the same directory, flushed, fsynced and
renamed over its final name, and the directory is fsynced; the model state goes first and the
training state last, so a checkpoint is complete exactly when its training-state file exists next
to its model-state file.
"""
import logging
import os
import re
import secrets
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

MODEL = "model_state"
TRAINING = "training_state"

_NAME_RE = re.compile(r"^(model_state|training_state)_e(\d+)_b(\d+)(?:_w(\d+))?\.th$")
# Temp files: hidden (AllenNLP's globs and ours never see them) and tagged with the writer's pid.
_TEMP_RE = re.compile(r"^\.(?:model_state|training_state)_e\d+_b\d+(?:_w\d+)?\.th\.tmp-(\d+)-[0-9a-f]+$")


class StateFile(NamedTuple):
    kind: str  # MODEL or TRAINING
    epochs_completed: int
    batches_in_epoch_completed: int
    rank: Optional[int]  # None when the state is not sharded


def file_name(kind: str, epochs_completed: int, batches: int, rank: Optional[int] = None) -> str:
    shard = "" if rank is None else f"_w{rank}"
    return f"{kind}_e{epochs_completed}_b{batches}{shard}.th"


def parse_name(name: str) -> Optional[StateFile]:
    """Parses a basename such as `model_state_e3_b0_w1.th`; None for anything else."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    kind, e, b, rank = match.groups()
    return StateFile(kind, int(e), int(b), None if rank is None else int(rank))


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str, mtime: Optional[float] = None) -> None:
    """
    `torch.save`s `obj` so that `path` is either its old content or the complete new one.
    `mtime`, when given, is stamped on the file: it is the save time retention reads back.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory or ".")


def load(path: str) -> Dict[str, Any]:
    """Loads a state file onto the CPU (the trainer moves tensors to its device when it restores)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Listing(NamedTuple):
    complete: List[Tuple[int, int]]  # (epochs, batches), oldest first
    incomplete: List[Tuple[int, int]]
    times: Dict[Tuple[int, int], float]  # save time (mtime of the training state) of complete ones
    stale_temps: List[str]  # temp files whose writer is gone


def list_checkpoints(directory: str, ranks: Optional[Iterable[int]]) -> Listing:
    """
    Lists checkpoints in `directory`. `ranks=None`: unsharded files only; otherwise a checkpoint
    is complete when every listed rank has both files.
    """
    wanted = [None] if ranks is None else list(ranks)
    found: Dict[Tuple[int, int], set] = {}
    stale = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return Listing([], [], {}, [])
    for entry in entries:
        parsed = parse_name(entry.name)
        if parsed is not None:
            if parsed.rank in wanted:
                key = (parsed.epochs_completed, parsed.batches_in_epoch_completed)
                found.setdefault(key, set()).add((parsed.kind, parsed.rank))
            continue
        temp = _TEMP_RE.match(entry.name)
        if temp is not None and not _pid_alive(int(temp.group(1))):
            stale.append(entry.path)
    need = {(kind, r) for kind in (MODEL, TRAINING) for r in wanted}
    complete = sorted(k for k, have in found.items() if have >= need)
    incomplete = sorted(k for k, have in found.items() if not have >= need)
    times = {
        k: os.stat(os.path.join(directory, file_name(TRAINING, *k, wanted[0]))).st_mtime
        for k in complete
    }
    return Listing(complete, incomplete, times, stale)


def remove_checkpoint(directory: str, progress: Tuple[int, int], ranks: Optional[Iterable[int]]) -> None:
    """
    Deletes one checkpoint's files: model states first, so that a crash half-way leaves a bare
    training-state file, which neither we nor AllenNLP's checkpointer would take for a checkpoint.
    """
    wanted = [None] if ranks is None else list(ranks)
    for kind in (MODEL, TRAINING):
        for r in wanted:
            try:
                os.remove(os.path.join(directory, file_name(kind, *progress, r)))
            except FileNotFoundError:
                pass


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # listed before this process starts saving: an earlier process with our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
