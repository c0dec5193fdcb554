"""
AllenNLP's pairs as a store: `model_state_e3_b0.th`, `training_state_e3_b0.th` and the record
`checkpoint_e3_b0.json` (written last), behind an optional prefix; `_w{rank}` files when the state
is sharded. A checkpoint is complete exactly when its training-state file exists next to its
model-state file (AllenNLP's own pairs included); the record keeps what retention needs without
loading the state files: the save time and the validation metrics.
"""
import logging
import os
import re
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from trainer_ckpt.checkpoint_info import label
from trainer_ckpt.io import durable
from trainer_ckpt.stores.base import Entry, Listing, Progress, entry_info

logger = logging.getLogger("trainer_ckpt.storage")

MODEL = "model_state"
TRAINING = "training_state"
RECORD = "checkpoint"
_KINDS = (MODEL, TRAINING, RECORD)
_SUFFIX = {MODEL: ".th", TRAINING: ".th", RECORD: ".json"}

class StateFile(NamedTuple):
    kind: str  # MODEL, TRAINING or RECORD
    epochs_completed: int
    batches_in_epoch_completed: int
    rank: Optional[int]  # None when the state is not sharded


class Found(NamedTuple):
    """One checkpoint in a directory listing."""

    progress: Progress
    time: float  # save time: from the record, else the training state's mtime
    size_bytes: int  # model + training state, this rank's files
    record: Dict[str, Any]  # {} for pairs written without one (AllenNLP's checkpointer)


class CheckpointDir:
    """
    The checkpoint files of one checkpointer in `directory`: AllenNLP's names, behind an
    optional `prefix` so that several checkpointers share a directory without touching each
    other's files (`best_model_state_e3_b0.th`).
    """

    def __init__(self, directory: str, prefix: str = "") -> None:
        self.directory = directory
        self.prefix = prefix
        kinds = "|".join(_KINDS)
        p = re.escape(prefix)
        self._name_re = re.compile(rf"^{p}({kinds})_e(\d+)_b(\d+)(?:_w(\d+))?\.(th|json)$")
        # Temp files of our own names only (and of `best.th`, which the AllenNLP face links, and of
        # the direct-I/O probe): anything else in the directory is not ours to remove.
        own = rf"{p}(?:{kinds})_e\d+_b\d+(?:_w\d+)?\.(?:th|json)" + ("|best\\.th|direct-probe" if not prefix else "")
        self._temp_re = re.compile(rf"^\.(?:{own})\.tmp-(\d+)-[0-9a-f]+$")
        self._records: Dict[str, Dict[str, Any]] = {}  # records never change once written

    def name(self, kind: str, progress: Progress, rank: Optional[int] = None) -> str:
        shard = "" if rank is None else f"_w{rank}"
        return f"{self.prefix}{kind}_{label(progress)}{shard}{_SUFFIX[kind]}"

    def path(self, kind: str, progress: Progress, rank: Optional[int] = None) -> str:
        return os.path.join(self.directory, self.name(kind, progress, rank))

    def parse(self, name: str) -> Optional[StateFile]:
        """Parses a basename such as `model_state_e3_b0_w1.th`; None for anything else."""
        match = self._name_re.match(name)
        if match is None or _SUFFIX[match.group(1)] != "." + match.group(5):
            return None
        kind, e, b, rank, _ = match.groups()
        return StateFile(kind, int(e), int(b), None if rank is None else int(rank))

    def write_states(
        self,
        progress: Progress,
        rank: Optional[int],
        model_state: Dict[str, Any],
        training_state: Dict[str, Any],
        mtime: float,
    ) -> Dict[str, Dict[str, Any]]:
        """Writes the model state, then the training state; returns their names, sizes, CRC32s."""
        os.makedirs(self.directory, exist_ok=True)
        model_path, training_path = self.path(MODEL, progress, rank), self.path(TRAINING, progress, rank)
        model_tmp, model_info = durable.save_temp(model_state, model_path)
        try:
            # The training state's mtime is the save time, as for AllenNLP's files.
            training_tmp, training_info = durable.save_temp(training_state, training_path, mtime=mtime)
        except BaseException:
            durable.remove_file(model_tmp)
            raise
        durable.commit([(model_tmp, model_path), (training_tmp, training_path)])  # the training state last
        return {MODEL: model_info, TRAINING: training_info}

    def write_record(self, progress: Progress, rank: Optional[int], record: Dict[str, Any]) -> None:
        """Writes a checkpoint's record, last: it commits the checkpoint."""
        self._records.pop(self.name(RECORD, progress, rank), None)
        durable.write_json(self.path(RECORD, progress, rank), record)

    def quarantine(self, progress: Progress, ranks: Optional[Iterable[int]]) -> List[str]:
        """Moves one checkpoint's files into `corrupt/`, never overwriting what is there."""
        names = [self.name(kind, progress, r) for kind in (MODEL, TRAINING, RECORD) for r in ([None] if ranks is None else list(ranks))]
        for name in names:
            self._records.pop(name, None)
        return durable.move_into_corrupt(self.directory, names)

    def list(self, ranks: Optional[Iterable[int]], own_rank: Optional[int] = None) -> Listing:
        """
        Lists the checkpoints: `ranks=None` for unsharded files only; otherwise a checkpoint is
        complete when every listed rank has both state files. Times, sizes and records are those
        of `own_rank` (default: the first listed rank).
        """
        wanted = [None] if ranks is None else list(ranks)
        found: Dict[Progress, Dict[Tuple[str, Optional[int]], os.DirEntry]] = {}
        stale = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return Listing([], [], [], [])
        for entry in entries:
            parsed = self.parse(entry.name)
            if parsed is not None:
                if parsed.rank in wanted:
                    key = (parsed.epochs_completed, parsed.batches_in_epoch_completed)
                    found.setdefault(key, {})[(parsed.kind, parsed.rank)] = entry
                continue
            temp = self._temp_re.match(entry.name)
            if temp is not None and durable.is_stale(entry.path, int(temp.group(1))):
                stale.append(entry.path)
        need = {(kind, r) for kind in (MODEL, TRAINING) for r in wanted}
        complete, incomplete, orphans = [], [], []
        for progress in sorted(found):
            files = found[progress]
            leftover = (RECORD, wanted[0] if own_rank is None else own_rank) not in files and any(
                durable.is_sharded_leftover(entry.path) for entry in files.values())  # a crash mid-save or mid-deletion
            if need <= files.keys() and not leftover:
                try:
                    complete.append(self._found(progress, files, wanted[0] if own_rank is None else own_rank))
                except FileNotFoundError:
                    continue  # deleted or moved since the directory was read (another rank's quarantine, retention)
            elif all(kind == RECORD for kind, _ in files):
                orphans.append(progress)
            else:
                incomplete.append(progress)
        return Listing(complete, incomplete, stale, orphans)

    def _found(self, progress: Progress, files: Dict, rank: Optional[int]) -> Found:
        training = files[(TRAINING, rank)].stat()
        size = files[(MODEL, rank)].stat().st_size + training.st_size
        record = {}
        if (RECORD, rank) in files:
            record = self._read_record(files[(RECORD, rank)].path)
        return Found(progress, record.get("time", training.st_mtime), size, record)

    def _read_record(self, path: str) -> Dict[str, Any]:
        name = os.path.basename(path)
        if name not in self._records:
            record = durable.read_json(path)
            if not record:
                return {}
            self._records[name] = record
        return self._records[name]

    def remove(self, progress: Progress, ranks: Optional[Iterable[int]]) -> None:
        """
        Deletes one checkpoint's files: the record first (a crash right after leaves an intact
        pair, which is still a checkpoint), then the model state, so that a crash half-way leaves a
        lone training state, which neither we nor AllenNLP's checkpointer take for a checkpoint.
        A state file missing while its record exists therefore never comes from us.
        """
        wanted = [None] if ranks is None else list(ranks)
        for kind in (RECORD, MODEL, TRAINING):
            for r in wanted:
                name = self.name(kind, progress, r)
                self._records.pop(name, None)
                (durable.remove_file if kind == RECORD else durable.discard)(os.path.join(self.directory, name))


class Pairs:
    """
    AllenNLP's pairs (`model_state_e3_b0.th`, `training_state_e3_b0.th`, `checkpoint_e3_b0.json`)
    as the engine's store: keys are progress tuples, ordered by progress. When the state is
    sharded (`sharded = True`), each rank writes its own `_w{rank}` files and a checkpoint is
    complete once every rank's are there.
    """

    def __init__(self, directory: str, prefix: str = "", rank: int = 0, world_size: int = 1) -> None:
        self.dir, self.directory, self.prefix = CheckpointDir(directory, prefix), directory, prefix
        self.rank, self.world_size, self.sharded = rank, world_size, False

    def _ranks(self) -> Optional[range]:
        return range(self.world_size) if self.sharded else None

    def _own(self) -> Optional[int]:
        return self.rank if self.sharded else None

    def list(self, own_only: bool = False) -> Listing:
        """Every rank's complete checkpoints (`own_only`: this rank's), by this rank's files."""
        listing = self.dir.list([self.rank] if own_only and self.sharded else self._ranks(), self._own())
        entries = [
            Entry(f.progress, self.label(f.progress), self.files(f.progress), f.record,
                  entry_info(f.progress, f.time, f.size_bytes, f.record))
            for f in listing.complete
        ]
        return listing._replace(complete=entries)

    def files(self, key: Progress) -> Dict[str, str]:
        return {kind: self.dir.path(kind, key, self._own()) for kind in (MODEL, TRAINING)}

    def record_path(self, key: Progress) -> str:
        return self.dir.path(RECORD, key, self._own())

    def write_record(self, key: Progress, record: Dict[str, Any]) -> None:
        self.dir.write_record(key, self._own(), record)

    def remove(self, key: Progress) -> None:
        self.dir.remove(key, self._ranks())

    def quarantine(self, key: Progress) -> List[str]:
        return self.dir.quarantine(key, self._ranks())

    def names(self, key: Progress) -> List[str]:
        """Every rank's file names of a checkpoint, the record first."""
        ranks = self._ranks() or [None]
        return [self.dir.name(kind, key, r) for kind in (RECORD, MODEL, TRAINING) for r in ranks]

    def label(self, key: Progress) -> str:
        return f"{self.prefix}{label(key)}"

    def owns(self, base: str) -> bool:
        """Whether `base` is one of this layout's file names (any rank's): what a store may ever delete."""
        return self.dir.parse(base) is not None

    @staticmethod
    def order(entry: Entry) -> Any:
        return entry.key


