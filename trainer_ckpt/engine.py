"""
The engine: framework-free checkpointing of named state objects into one directory, in a file
layout that a face gives it. It knows nothing of trainers, runners or hooks.

A checkpoint is a name (`model_0000999`), one or more state files (`torch.save`d objects, one per
role: `{"checkpoint": "model_0000999.pth"}`) and a JSON record written last, which commits it:
sizes and CRC32s of the state files (computed while writing), the save time and point, the
random state, and whatever the face adds. Every file goes through a temp file, fsync and rename,
so a crash at any instant leaves the old set of checkpoints, or the old set plus one complete new
one. Files a peer wrote (no record) are checkpoints too: verified by loading them.

Reading walks the checkpoints newest first (or a preferred one first: the face's pointer file),
checks each against its record and loads it with `weights_only=True`; a bad one is moved into
`corrupt/` with a WARNING and the next one is tried. Retention asks a policy which checkpoints to
keep among those a face selects, never deletes the newest, and deletes the record first.
"""
import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from trainer_ckpt import storage
from trainer_ckpt.background import BackgroundWriter, Snapshotter
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.lock import lock_directory, unlock_directory
from trainer_ckpt.retention_policies import RetentionPolicy

logger = logging.getLogger(__name__)

RNG = "rng"  # the role of the random state's file, when the face asks for one
_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


class Layout(NamedTuple):
    """
    How a face names a checkpoint's files: data plus functions, no class hierarchy.
    `files(name)` -> {role: basename} of the state files, the main one first; `record(name)` -> the
    record's basename; `parse(basename)` -> the checkpoint name when `basename` is a main state
    file of this layout, else None.
    """

    files: Callable[[str], Dict[str, str]]
    record: Callable[[str], str]
    parse: Callable[[str], Optional[str]]


class Entry(NamedTuple):
    """One checkpoint on disk."""

    name: str
    paths: Dict[str, str]  # role -> path of the files present (all of them when it has a record)
    record: Dict[str, Any]  # {} for files a peer wrote
    info: CheckpointInfo  # its point, save time (the record's, else the main file's mtime), size


class UnusableCheckpoint(RuntimeError):
    """No checkpoint in the directory can be used: each was bad (their files are in corrupt/)."""


class Engine:
    """
    # Parameters

    directory : `str`
    layout : `Layout`
    background : `bool`, optional (default=`False`)
        Snapshot the state into reused CPU buffers and write it on a worker thread.
    safe_globals : `Sequence[Any]`, optional
        Types allowed to load besides tensors and plain containers.
    read_only : `bool`, optional (default=`False`)
        Never write, clean up or lock.
    clock : `Callable[[], float]`, optional (default=`time.time`)
    where : `str`, optional
        Names the face in messages.
    """

    def __init__(
        self,
        directory: str,
        layout: Layout,
        *,
        background: bool = False,
        safe_globals: Sequence[Any] = (),
        read_only: bool = False,
        clock: Optional[Callable[[], float]] = None,
        where: str = "trainer_ckpt",
    ) -> None:
        self.directory, self.layout, self.where = directory, layout, where
        self.background, self.read_only = background, read_only
        self.safe_globals = list(safe_globals)
        self.clock = clock or time.time
        self._writer, self._snapshot = BackgroundWriter(), Snapshotter()
        self._lock = None if read_only else lock_directory(directory)
        if not read_only:
            self._clean_up()

    # ---- saving --------------------------------------------------------------------------

    def save(
        self,
        name: str,
        states: Dict[str, Any],
        info: CheckpointInfo,
        record: Optional[Dict[str, Any]] = None,
        after_commit: Optional[Callable[[str], None]] = None,
        retention: Optional[Tuple[RetentionPolicy, Callable[[Entry], bool]]] = None,
    ) -> Dict[str, str]:
        """
        Saves `states` ({role: object}) as checkpoint `name`, then calls `after_commit(name)`
        (a face's pointer file), then applies `retention`, a policy and the checkpoints it judges.
        In the background, the objects are copied now and written on the worker thread.
        """
        if self.read_only:
            raise RuntimeError(f"{self.where}: this checkpointer is read-only, got a save request. Build it with read_only=False.")
        self.wait()
        if self.background:
            states = self._snapshot.take(states)
            self._writer.submit(lambda: self._commit(name, states, info, record, after_commit, retention))
        else:
            self._commit(name, states, info, record, after_commit, retention)
        return {role: os.path.join(self.directory, base) for role, base in self.layout.files(name).items()}

    def _commit(self, name, states, info, record, after_commit, retention) -> None:
        os.makedirs(self.directory, exist_ok=True)
        names = self.layout.files(name)
        temps, files = [], {}
        try:
            for role, base in names.items():
                if role in states:
                    tmp, files[role] = storage._save_temp(states[role], os.path.join(self.directory, base), info.time)
                    temps.append((tmp, os.path.join(self.directory, base)))
        except BaseException:
            for tmp, _ in temps:
                storage.remove_file(tmp)
            raise
        # A record of an earlier checkpoint of this name goes first: its files are about to change.
        storage.remove_file(os.path.join(self.directory, self.layout.record(name)))
        storage.commit(temps)
        full = {
            **(record or {}),
            "format": 1,
            "name": name,
            "time": info.time,
            "epochs_completed": info.epochs_completed,
            "batches_in_epoch_completed": info.batches_in_epoch_completed,
            "total_batches_completed": info.total_batches_completed,
            "metrics": {k: float(v) for k, v in info.metrics.items() if _number(v)},
            "files": files,
        }
        storage.atomic_write(os.path.join(self.directory, self.layout.record(name)), _json(full))
        logger.debug("Saved checkpoint %s in %s", name, self.directory)
        if after_commit is not None:
            after_commit(name)
        if retention is not None:
            self.retain(*retention)

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed."""
        self._writer.wait()
        self._writer.check()

    def close(self) -> None:
        self.wait()
        if self._lock is not None:
            unlock_directory(self._lock)
            self._lock = None
            self.read_only = True

    # ---- listing, retention --------------------------------------------------------------

    def entries(self) -> List[Entry]:
        """The complete checkpoints, oldest first (by save time, then name)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        present = set(names)
        found = []
        for base in names:
            name = self.layout.parse(base)
            if name is None:
                continue
            record = _read_json(os.path.join(self.directory, self.layout.record(name))) if self.layout.record(name) in present else {}
            expected = record.get("files", {})
            if any(f["name"] not in present for f in expected.values()):
                continue  # lost a file: not a checkpoint (quarantined by the next reader that may write)
            paths = {role: os.path.join(self.directory, b) for role, b in self.layout.files(name).items() if b in present}
            stat = os.stat(paths[next(iter(paths))])
            info = CheckpointInfo(
                record.get("epochs_completed", 0),
                record.get("batches_in_epoch_completed", 0),
                time=record.get("time", stat.st_mtime),
                metrics=record.get("metrics", {}),
                total_batches_completed=record.get("total_batches_completed"),
                size_bytes=sum(f["size"] for f in expected.values()) if expected else stat.st_size,
            )
            found.append(Entry(name, paths, record, info))
        return sorted(found, key=lambda e: (e.info.time, e.name))

    def retain(self, policy: RetentionPolicy, select: Callable[[Entry], bool]) -> None:
        """Deletes the checkpoints among `select`'s that `policy` does not keep (never the newest)."""
        candidates = [e for e in self.entries() if select(e)]
        keep = policy.should_keep([e.info for e in candidates], self.clock())
        for entry, kept in zip(candidates[:-1], keep[:-1]):  # never the newest
            if not kept:
                logger.info(
                    "Deleting checkpoint %s in %s: retention policy %s does not keep it",
                    entry.name, self.directory, policy.describe(),
                )
                self.delete(entry)

    def delete(self, entry: Entry) -> None:
        # The record first: a crash right after leaves complete files, which still load.
        storage.remove_file(os.path.join(self.directory, self.layout.record(entry.name)))
        for path in entry.paths.values():
            storage.remove_file(path)

    def _clean_up(self) -> None:
        """Removes temp files of dead writers, and records whose state files are all gone."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for base in names:
            match = _TEMP.match(base)
            if match and not storage._pid_alive(int(match.group(1))):
                logger.info("Removing temp file %s left by an interrupted save", base)
                storage.remove_file(os.path.join(self.directory, base))

    # ---- loading -------------------------------------------------------------------------

    def load(self, entry: Entry, roles: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Verifies `entry`'s files against its record, then loads them ({role: object})."""
        loaded = {}
        expected = entry.record.get("files", {})
        try:
            with torch.serialization.safe_globals(self.safe_globals):
                for role, path in entry.paths.items():
                    if roles is None or role in roles:
                        loaded[role] = storage.load(path, expected.get(role))
        except storage.UnsafeCheckpoint as e:
            raise UnsafeCheckpointError(
                f"{self.where}: checkpoint {entry.name} in {self.directory} holds types that are not "
                f"allowed to load, got: {e} Nothing in it was run. If you trust this file, pass those "
                "types in `safe_globals`."
            ) from e
        return loaded

    def newest_good(self, prefer: Optional[str] = None, roles: Optional[Sequence[str]] = None) -> Optional[Tuple[Entry, Dict[str, Any]]]:
        """
        The newest checkpoint that verifies and loads (`prefer`, a name, tried first), with its
        states; bad ones are moved into corrupt/ with a WARNING. None when there is none at all.
        """
        self.wait()
        entries = self.entries()
        entries.sort(key=lambda e: e.name == prefer)  # stable: `prefer` last, i.e. tried first
        rejected = []
        for entry in reversed(entries):
            try:
                return entry, self.load(entry, roles)
            except storage.BadCheckpoint as e:
                rejected.append(f"{entry.name} ({e})")
                moved = [] if self.read_only else self.quarantine(entry)
                logger.warning(
                    "Checkpoint %s in %s is not usable: %s. %sFalling back to an older checkpoint.",
                    entry.name, self.directory, e, f"Moved {', '.join(moved)} into corrupt/. " if moved else "",
                )
        if rejected:
            raise UnusableCheckpoint(
                f"{self.where}: no usable checkpoint in {self.directory}, got {len(rejected)} bad one(s): "
                f"{'; '.join(rejected[:10])}. Their files are in {os.path.join(self.directory, 'corrupt')}; "
                "start afresh, or restore a good copy of one of them."
            )
        return None

    def quarantine(self, entry: Entry) -> List[str]:
        """Moves a checkpoint's files into corrupt/, never overwriting what is there."""
        names = [self.layout.record(entry.name)] + [os.path.basename(p) for p in entry.paths.values()]
        return storage.move_into_corrupt(self.directory, names)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds types `weights_only` loading refuses; nothing in it was run."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json(record: Dict[str, Any]) -> Callable:
    import json

    payload = json.dumps(record, sort_keys=True).encode()
    return lambda f: f.write(payload)


def _read_json(path: str) -> Dict[str, Any]:
    import json

    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable checkpoint record %s: %s", path, e)
        return {}
