"""
Everything that touches checkpoint files: AllenNLP's names, parsing (of basenames only), crash-safe
writes, listing checkpoints, and deleting.

A crash at any instant leaves either the old set of checkpoints or the old set plus one complete
new one: every file is written to a hidden temp file in the same directory, flushed, fsynced and
renamed over its final name, and the directory is fsynced. The model state goes first and the
training state after it, so a checkpoint is complete exactly when its training-state file exists
next to its model-state file (AllenNLP's pairs included). A small JSON record written last keeps
what retention needs without loading the state files: the save time and the validation metrics.
"""
import contextlib
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch

from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt import fastio
from trainer_ckpt.fastio import ChecksummingWriter, WritebackFile, direct_io, file_crc, open_direct  # noqa: F401 (file_crc, direct_io: used here and by callers)

logger = logging.getLogger(__name__)

MODEL = "model_state"
TRAINING = "training_state"
RECORD = "checkpoint"
_KINDS = (MODEL, TRAINING, RECORD)
_SUFFIX = {MODEL: ".th", TRAINING: ".th", RECORD: ".json"}

Progress = Tuple[int, int]


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


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write, mtime: Optional[float] = None) -> None:
    """
    Calls `write(file)` on a temp file next to `path`, then makes it `path`, so that `path` is
    either its old content or the complete new one. `mtime`, when given, is stamped on the file.
    """
    commit([(_write_temp(path, write, mtime), path)])


# Temp files this process is writing and has not committed yet: not stale, though our pid is alive
# (another checkpointer of this process may list the directory while a background save writes).
_IN_FLIGHT: set = set()


def temp_path(path: str) -> str:
    """
    A new hidden temp name next to `path` (`.{name}.tmp-{pid}-{random}`), marked in flight until
    it is committed or removed: clean-up knows the shape, and leaves this process's own alone.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    _IN_FLIGHT.add(os.path.abspath(tmp))
    return tmp


def _write_temp(path: str, write, mtime: Optional[float] = None, direct: bool = False) -> str:
    """Writes a hidden temp file next to `path` (not yet fsynced; `direct`: with O_DIRECT); removes it if that fails."""
    tmp = temp_path(path)
    try:
        f = open_direct(tmp) if direct else None  # None: no bounce buffers free, or not wanted
        if f is not None:
            try:
                write(f)
            finally:
                f.close()
        else:
            with open(tmp, "wb") as f:
                write(WritebackFile(f))
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
    except BaseException as e:
        remove_file(tmp)
        cause = _os_error_in(e)
        if cause is not None and cause is not e:
            raise cause from e  # torch.save reports a full disk as a RuntimeError about zip offsets
        raise
    return tmp


def commit(renames: List[Tuple[str, str]]) -> None:
    """
    Makes temp files final, in order: each is fsynced first, then renamed over its final name,
    then the directory is fsynced. Fsyncing them all before the first rename lets the disk flush
    one file while the next is being written. On failure every temp file not yet renamed goes.
    """
    try:
        for tmp, _ in renames:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in renames:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # sharded state saved again under the same name: its record is gone
            os.replace(tmp, path)
            _IN_FLIGHT.discard(os.path.abspath(tmp))
    except BaseException:
        for tmp, _ in renames:
            remove_file(tmp)
        raise
    fsync_dir(os.path.dirname(renames[0][1]) or ".")


def _os_error_in(error: BaseException) -> Optional[OSError]:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_save(obj: Any, path: str, mtime: Optional[float] = None) -> Dict[str, Any]:
    """`torch.save`s `obj` with `atomic_write`; returns the file's name, size and CRC32."""
    tmp, info = _save_temp(obj, path, mtime)
    commit([(tmp, path)])
    return info


# Process-wide torch settings that saves and loads change for their duration: changed by the
# first of them in flight, put back by the last, under one lock, so that saves and loads of
# several threads never undo each other's setting (see `_without_zip_crc32`, `allowing`).
_SETTINGS_LOCK = threading.Lock()
_ZIP_CRC32 = {"saves": 0, "previous": True}


@contextlib.contextmanager
def _without_zip_crc32() -> Iterator[None]:
    """
    torch.save without its per-entry zip CRC32 (the record holds a CRC32 of the whole file,
    computed on the way; torch's would be a second pass over every byte, about a fifth of the
    save). torch reads the setting when a save starts; it is off while any save of ours is in
    flight, and the user's value is back once none is (a torch.save of the user's own on another
    thread meanwhile writes no per-entry CRC32: torch.load loads such files as any other).
    """
    with _SETTINGS_LOCK:
        if _ZIP_CRC32["saves"] == 0:
            _ZIP_CRC32["previous"] = torch.serialization.get_crc32_options()
            torch.serialization.set_crc32_options(False)
        _ZIP_CRC32["saves"] += 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            _ZIP_CRC32["saves"] -= 1
            if _ZIP_CRC32["saves"] == 0:
                torch.serialization.set_crc32_options(_ZIP_CRC32["previous"])


def _save_temp(obj: Any, path: str, mtime: Optional[float] = None, **save_kwargs: Any) -> Tuple[str, Dict[str, Any]]:
    written: List[ChecksummingWriter] = []

    def write(f) -> None:
        writer = ChecksummingWriter(f)
        with _without_zip_crc32():
            torch.save(obj, writer, **save_kwargs)
        written.append(writer)

    tmp = _write_temp(path, write, mtime, direct=direct_io(os.path.dirname(path) or "."))
    return tmp, {"name": os.path.basename(path), "size": written[0].size, "crc32": written[0].crc32}


_ALLOWED: Dict[Any, int] = {}  # type -> loads in flight that allow it; only types we added are here


@contextlib.contextmanager
def allowing(types: Iterable[Any]) -> Iterator[None]:
    """
    Lets `weights_only` loading accept `types` within. Unlike `torch.serialization.safe_globals`,
    which on exit also drops types the user had allowed for the whole process, it takes back only
    what it added, and only when no other load in flight (another thread) still allows it.
    """
    types = list(dict.fromkeys(types))
    with _SETTINGS_LOCK:
        present = set(torch.serialization.get_safe_globals())
        mine = [t for t in types if t in _ALLOWED or t not in present]
        torch.serialization.add_safe_globals([t for t in mine if t not in present])
        for t in mine:
            _ALLOWED[t] = _ALLOWED.get(t, 0) + 1
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            done = []
            for t in mine:
                _ALLOWED[t] -= 1
                if not _ALLOWED[t]:
                    del _ALLOWED[t]
                    done.append(t)
            if done:
                _disallow(done)


def _disallow(types: List[Any]) -> None:
    """Takes `types` off torch's list in one step (torch swaps its set), so that a load on another thread never sees a list without the rest."""
    remove = getattr(torch.serialization, "_weights_only_unpickler", None)
    remove = getattr(remove, "_remove_safe_globals", None)
    if remove is not None:
        remove(types)
        return
    now = [t for t in torch.serialization.get_safe_globals() if t not in types]  # an older torch
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(now)


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
        if "Weights only load failed" in str(e):
            # torch's message is long and suggests weights_only=False; keep what names the type.
            lines = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
            raise UnsafeCheckpoint(f"{os.path.basename(path)}: {' '.join(lines) or str(e)}") from e
        raise BadCheckpoint(f"{os.path.basename(path)} does not load: {e}") from e
    except OSError as e:
        raise BadCheckpoint(f"cannot read {os.path.basename(path)}: {e}") from e
    except Exception as e:  # a torn zip archive, a truncated pickle, ...
        raise BadCheckpoint(f"{os.path.basename(path)} does not load: {type(e).__name__}: {e}") from e


def verify(path: str, expected: Dict[str, Any]) -> None:
    """Checks a file's size, then its CRC32, against its record; raises BadCheckpoint."""
    if "parts" in expected:  # a directory of sharded state
        from trainer_ckpt import sharded

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


def move_into_corrupt(directory: str, names: Iterable[str]) -> List[str]:
    """Moves files of `directory` into its `corrupt/`, never overwriting what is there; returns those moved."""
    target = os.path.join(directory, "corrupt")
    os.makedirs(target, exist_ok=True)
    moved = []
    for name in names:
        dest, n = os.path.join(target, name), 1
        while os.path.exists(dest):
            dest, n = os.path.join(target, f"{name}.{n}"), n + 1
        try:
            os.rename(os.path.join(directory, name), dest)
            moved.append(name)
        except FileNotFoundError:
            pass
    fsync_dir(directory)
    return moved


def remove_file(path: str) -> None:
    """Removes a file, or a directory of sharded state."""
    _IN_FLIGHT.discard(os.path.abspath(path))
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


# A state file this large is unlinked on a thread: ext4 frees its blocks inside `unlink`, which
# took 0.4 s for a 512 MiB checkpoint on the VM this was measured on (a quarter of a synchronous
# save that deletes the previous one). It is first renamed to a hidden temp name (instant and
# atomic: the checkpoint is gone at once; a crash leaves a stale temp file, which clean-up removes).
_DISCARD_ON_A_THREAD = 64 << 20


def discard(path: str) -> None:
    """Removes a checkpoint's state file (a large one: renamed now, unlinked on a thread)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return
    if stat.st_size < _DISCARD_ON_A_THREAD or os.path.isdir(path):
        remove_file(path)
        return
    tmp = temp_path(path)
    try:
        os.rename(path, tmp)
    except FileNotFoundError:
        _IN_FLIGHT.discard(os.path.abspath(tmp))
        return
    try:
        fastio.pool("delete").submit(remove_file, tmp)
    except RuntimeError:  # the interpreter is exiting
        remove_file(tmp)


def wait_for_discards() -> None:
    """Waits until the files `discard` handed to its thread are unlinked."""
    fastio.wait_for("delete")


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
        return f"{self.prefix}{kind}_e{progress[0]}_b{progress[1]}{shard}{_SUFFIX[kind]}"

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
        model_tmp, model_info = _save_temp(model_state, model_path)
        try:
            # The training state's mtime is the save time, as for AllenNLP's files.
            training_tmp, training_info = _save_temp(training_state, training_path, mtime=mtime)
        except BaseException:
            remove_file(model_tmp)
            raise
        commit([(model_tmp, model_path), (training_tmp, training_path)])  # the training state last
        return {MODEL: model_info, TRAINING: training_info}

    def write_record(self, progress: Progress, rank: Optional[int], record: Dict[str, Any]) -> None:
        """Writes a checkpoint's record, last: it commits the checkpoint."""
        self._records.pop(self.name(RECORD, progress, rank), None)
        write_json(self.path(RECORD, progress, rank), record)

    def quarantine(self, progress: Progress, ranks: Optional[Iterable[int]]) -> List[str]:
        """Moves one checkpoint's files into `corrupt/`, never overwriting what is there."""
        names = [self.name(kind, progress, r) for kind in (MODEL, TRAINING, RECORD) for r in ([None] if ranks is None else list(ranks))]
        for name in names:
            self._records.pop(name, None)
        return move_into_corrupt(self.directory, names)

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
            if temp is not None and _stale(entry.path, int(temp.group(1))):
                stale.append(entry.path)
        need = {(kind, r) for kind in (MODEL, TRAINING) for r in wanted}
        complete, incomplete, orphans = [], [], []
        for progress in sorted(found):
            files = found[progress]
            if need <= files.keys():
                complete.append(self._found(progress, files, wanted[0] if own_rank is None else own_rank))
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
            record = read_json(path)
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
                (remove_file if kind == RECORD else discard)(os.path.join(self.directory, name))


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
        return f"{self.prefix}e{key[0]}_b{key[1]}"

    def owns(self, base: str) -> bool:
        """Whether `base` is one of this layout's file names (any rank's): what a store may ever delete."""
        return self.dir.parse(base) is not None

    @staticmethod
    def order(entry: Entry) -> Any:
        return entry.key


class Layout(NamedTuple):
    """
    How a one-file-per-checkpoint face names its files (fvcore, ignite, mmengine): data plus
    functions. `files(name)` -> {role: basename} of the state files, the main one first;
    `record(name)` -> the record's basename; `parse(basename)` -> the checkpoint name when
    `basename` is a main state file of this layout, else None.
    """

    files: Callable[[str], Dict[str, str]]
    record: Callable[[str], str]
    parse: Callable[[str], Optional[str]]


_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")  # what `_write_temp` names a temp file of `name`


def owned_by(layout: Layout, base: str) -> bool:
    """Whether `base` is one of `layout`'s file names: a main file, or a hidden file (record, RNG) of one."""
    if layout.parse(base) is not None:
        return True
    if base.startswith("."):
        name = layout.parse(base[1:].rsplit(".", 1)[0])  # `.model_0000009.pth.json` -> `model_0000009`
        return name is not None and (base == layout.record(name) or base in layout.files(name).values())
    return False


class NamedFiles:
    """
    A `Layout`'s checkpoints as the engine's store: keys are names, ordered by save time (the
    record's, else the main file's mtime), then name. A file a peer wrote (no record) is a
    checkpoint; one of ours is complete when every file its record lists is there.
    """

    sharded = False

    def __init__(self, directory: str, layout: Layout) -> None:
        self.directory, self.layout = directory, layout

    def list(self, own_only: bool = False) -> Listing:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return Listing([], [], [], [])
        present = set(names)
        complete, incomplete, stale = [], [], []
        for base in names:
            name = self.layout.parse(base)
            if name is None:
                temp = _TEMP.match(base)
                if (temp is not None and (owned_by(self.layout, temp["name"]) or temp["name"] == "direct-probe")
                        and _stale(os.path.join(self.directory, base), int(temp["pid"]))):
                    stale.append(os.path.join(self.directory, base))
                continue
            has_record = self.layout.record(name) in present
            record = read_json(self.record_path(name)) if has_record else {}
            expected = record.get("files", {})
            if any(f["name"] not in present for f in expected.values()):
                incomplete.append(name)  # lost a file its record lists
                continue
            paths = {role: os.path.join(self.directory, b) for role, b in self.layout.files(name).items() if b in present}
            stat = os.stat(os.path.join(self.directory, base))
            size = sum(f["size"] for f in expected.values()) if expected else stat.st_size
            progress = (record.get("epochs_completed", 0), record.get("batches_in_epoch_completed", 0))
            complete.append(Entry(name, name, paths, record, entry_info(progress, record.get("time", stat.st_mtime), size, record)))
        return Listing(sorted(complete, key=self.order), incomplete, stale, [])

    def files(self, key: str) -> Dict[str, str]:
        return {role: os.path.join(self.directory, b) for role, b in self.layout.files(key).items()}

    def record_path(self, key: str) -> str:
        return os.path.join(self.directory, self.layout.record(key))

    def write_record(self, key: str, record: Dict[str, Any]) -> None:
        write_json(self.record_path(key), record)

    def remove(self, key: str) -> None:
        remove_file(self.record_path(key))  # the record first: complete files left still load
        for path in self.files(key).values():
            discard(path)

    def quarantine(self, key: str) -> List[str]:
        return move_into_corrupt(self.directory, self.names(key))

    def names(self, key: str) -> List[str]:
        """A checkpoint's file names, the record first."""
        return [self.layout.record(key)] + list(self.layout.files(key).values())

    def label(self, key: str) -> str:
        return key

    def owns(self, base: str) -> bool:
        """Whether `base` is one of this layout's file names: what a store may ever delete."""
        return owned_by(self.layout, base)

    @staticmethod
    def order(entry: Entry) -> Any:
        return entry.info.time, entry.key


def write_json(path: str, record: Dict[str, Any]) -> None:
    payload = json.dumps(record, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(payload))


def read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable checkpoint record %s: %s", path, e)
        return {}


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


def _stale(path: str, pid: int) -> bool:
    """Whether a temp file's writer is gone."""
    if pid == os.getpid():
        return os.path.abspath(path) not in _IN_FLIGHT  # not ours: an earlier process with our pid
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
