"""
The engine: framework-free checkpointing of named state objects into one directory. It knows
nothing of trainers, runners or hooks; a face translates its framework's calls into these.

A checkpoint is a key (a progress point, a name), one or more state files (`torch.save`d objects,
one per role) and a JSON record written last, which commits it: sizes and CRC32s of the state
files (computed while writing), the save time and point, metrics, and whatever the face adds.
Where the files go and what they are called is a *store* (`stores.Pairs` for AllenNLP's pairs,
`stores.NamedFiles` for one-file layouts): `list()`, `files(key)`, `record_path(key)`,
`write_record`, `remove`, `quarantine`, `label`, `order`, `sharded`.

Every file goes through a temp file, fsync and rename, so a crash at any instant leaves the old set
of checkpoints, or the old set plus one complete new one. Files a peer wrote (no record) are
checkpoints too: verified by loading them. Reading walks the checkpoints newest first (or a
preferred one first), checks each against its record and loads it with `weights_only=True`; a bad
one is moved into `corrupt/` with a WARNING and the next one is tried. Retention asks a policy
which checkpoints to keep, never deletes the newest, and deletes the record first.

Messages go through the loggers under "trainer_ckpt" and, for an engine given a `logger` (a face
gives its framework's), to that logger's handlers too: see `core.logs`.
"""
import contextvars
import errno
import functools
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from trainer_ckpt.core import distributed
from trainer_ckpt.core.background import BackgroundWriter, Snapshotter, on_device, require_host_memory
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.lock import lock_directory, unlock_directory
from trainer_ckpt.core.logs import routed
from trainer_ckpt import stores
from trainer_ckpt.io import durable, group, loading, sharded
from trainer_ckpt.stores import RNG, Entry

if TYPE_CHECKING:  # for annotations only: the engine applies a policy, it never imports one
    from trainer_ckpt.policies.retention import RetentionPolicy

logger = logging.getLogger("trainer_ckpt.engine")  # its 0.1 name, which users may filter on


PER_RANK = "per_rank"  # in a sharded checkpoint, the RNG file holds every rank's state (see core.rng.restore_rng)
Retention = Tuple["RetentionPolicy", Callable[[Entry], bool]]  # a policy, and the entries it judges


@functools.lru_cache(maxsize=None)
def versions() -> Dict[str, str]:
    """What wrote a checkpoint, for `trainer_ckpt diff`."""
    import platform

    import torch

    from trainer_ckpt import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "trainer_ckpt": __version__}


def _world_size(store: Any) -> int:
    return store.world_size if getattr(store, "sharded", False) else distributed.world_size()


class UnusableCheckpoint(RuntimeError):
    """No checkpoint in the directory can be used: each was bad (their files are in corrupt/)."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds types `weights_only` loading refuses; nothing in it was run."""


class CheckpointSaveError(OSError, RuntimeError):
    """A save failed (full disk, I/O error, read-only directory); earlier checkpoints are intact."""


def snapshot_bytes(state: Any, devices_only: bool = False) -> int:
    """The bytes a snapshot of nested `state` takes in host memory (`devices_only`: of its device tensors)."""
    if isinstance(state, torch.Tensor):
        local = sharded.local_part(state)  # a DTensor: this rank's shard
        state = state if local is None else local
        counted = state.layout == torch.strided and not (devices_only and state.device.type == "cpu")
        return state.numel() * state.element_size() if counted else 0
    if isinstance(state, dict):
        return sum(snapshot_bytes(value, devices_only) for value in state.values())
    if type(state) in (list, tuple):
        return sum(snapshot_bytes(value, devices_only) for value in state)
    return 0


def uses_snapshots(background: bool) -> bool:
    """Whether saves copy into snapshot buffers: background saves, and synchronous saves of CUDA state."""
    return background or torch.cuda.is_available()


class Engine:
    """
    # Parameters

    store : a store (see the module's docstring)
    background : `bool`, optional (default=`False`)
        Snapshot the state into reused CPU buffers and write it on a worker thread.
    safe_globals : `Sequence[Any]`, optional
        Types allowed to load besides tensors and plain containers.
    read_only : `bool`, optional (default=`False`)
        Never write, clean up or lock.
    primary : `bool`, optional (default=`True`)
        False on the other ranks of a distributed run: they write their own shards only, and
        leave locking, retention and clean-up to the primary.
    on_save_error : `str`, optional (default=`"raise"`)
        `"warn"`: a failed save is logged and returns None instead of raising.
    clock : `Callable[[], float]`, optional (default=`time.time`)
    where : `str`, optional
        Names the face in messages.
    trust_hint : `str`, optional
        How a user allows a type that safe loading refused, in that face's terms.
    save_error_hint : `str`, optional
        Ends the message of a failed save: another fix, in that face's terms.
    save_kwargs : `Dict[str, Any]`, optional
        Passed on to `torch.save` (ignite's `DiskSaver(**kwargs)`).
    logger : `logging.Logger`, optional
        A framework's logger: while this engine acts, the records of trainer_ckpt's loggers go to
        its handlers too (see `logs_to`). None: they go where the caller routes them, if anywhere.
    max_host_memory : `int`, optional
        Bytes of host memory the snapshot buffers may take. A state whose snapshot would take more
        is saved on the training thread from the live tensors instead (the loop blocks for the
        write; torch.save copies a device tensor to the host one at a time). None: no bound.
    """

    def __init__(
        self,
        store: Any,
        *,
        background: bool = False,
        safe_globals: Sequence[Any] = (),
        read_only: bool = False,
        primary: bool = True,
        on_save_error: str = "raise",
        clock: Optional[Callable[[], float]] = None,
        where: str = "trainer_ckpt",
        trust_hint: str = "pass those types in `safe_globals`.",
        save_error_hint: str = "",
        save_kwargs: Optional[Dict[str, Any]] = None,
        logger: Optional[logging.Logger] = None,
        max_host_memory: Optional[int] = None,
    ) -> None:
        self.logger = logger
        require_host_memory(where, max_host_memory)
        self.max_host_memory = max_host_memory
        self.store, self.directory, self.where, self.trust_hint = store, store.directory, where, trust_hint
        self.background, self.read_only, self.primary = background, read_only, primary
        self.on_save_error, self.save_error_hint = on_save_error, save_error_hint
        self.safe_globals = list(safe_globals)
        self.save_kwargs = dict(save_kwargs or {})
        self.clock = clock or time.time
        self._writer, self._snapshot = BackgroundWriter(), Snapshotter()
        self._over_bound = False  # a save did not fit max_host_memory (said once)
        self._settle = getattr(store, "settle", None)  # a store with uploads in flight (Mirrored)
        self._verified: set = set()  # (key, size, time) of checkpoints written or checked here
        self._last_size: Optional[int] = None  # bytes of the last checkpoint: the next one's estimate
        # The writer of an unsharded directory (it holds the lock: no one else writes there) lists
        # it once, then keeps this index itself: a save costs no listing however long the history.
        self._index: Optional[Dict[Any, Entry]] = None
        self._lock = lock_directory(self.directory) if self.may_write else None
        if self._lock is not None and hasattr(store, "acquire"):  # a bucket prefix's lock (Mirrored): one run per prefix
            try:
                store.acquire(where)
            except BaseException:
                unlock_directory(self._lock)
                raise

    @property
    def may_write(self) -> bool:
        """Whether this process locks, cleans up, quarantines and applies retention."""
        return self.primary and not self.read_only

    # ---- saving --------------------------------------------------------------------------

    def require_writable(self) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.where}: this checkpointer is read-only, got a save request. Build it with read_only=False.")

    @routed
    def save(
        self,
        key: Any,
        states: Dict[str, Any],
        info: CheckpointInfo,
        record: Optional[Dict[str, Any]] = None,
        after_commit: Optional[Callable[[Any], None]] = None,
        retention: Optional[Retention] = None,
    ) -> Optional[Dict[str, str]]:
        """
        Saves `states` ({role: object}) as checkpoint `key` with `record`'s extra facts, then
        calls `after_commit(key)` (a face's pointer file), then applies `retention` (on the
        primary). In the background, the objects are copied now and written on the worker thread.
        Returns the state files' paths, or None when the save failed and `on_save_error` is "warn".
        """
        collective = bool(self._sharded(states))  # sharded state: every rank writes it, with DCP
        if not (self.primary or self.store.sharded or collective):
            return {}  # unsharded state: the primary writes it
        self.require_writable()
        self.wait()  # at most one save in flight; the snapshot buffers are free again
        if self.background and self._fits(states, devices_only=False):
            # Sharded state: every rank copies its shards, and the worker's collectives (DCP, the
            # commit) run on a group of their own (see io.group).
            writes = group.group("writes") if collective else None
            states = self._snapshot.take(states)  # a consistent copy now: training may go on
            routed = contextvars.copy_context()  # its messages go where this call's go
            routed.run(group.use, writes)
            self._writer.submit(lambda: routed.run(self._commit_or_warn, key, states, info, record, after_commit, retention))
            return self.store.files(key)
        if not collective and self.uses_snapshots and on_device(states) and self._fits(states, devices_only=True):
            # CUDA state: copied into reused pinned buffers at once (torch.save alone would copy
            # each tensor into new pageable memory, one synchronous copy at a time).
            states = self._snapshot.take(states, devices_only=True)
        if not self._commit_or_warn(key, states, info, record, after_commit, retention):
            return None
        return self.store.files(key)

    def _fits(self, states: Dict[str, Any], devices_only: bool) -> bool:
        """Whether a snapshot of `states` fits in `max_host_memory`; when it does not, the buffers are let go."""
        if self.max_host_memory is None:
            return True
        size = snapshot_bytes(states, devices_only)
        if size <= self.max_host_memory:
            return True
        if not self._over_bound:
            logger.info("%s: a snapshot of this state takes %d bytes, over max_host_memory=%d: saving on the training "
                        "thread from the live tensors instead", self.where, size, self.max_host_memory)
        self._over_bound, self._snapshot = True, Snapshotter()
        return False

    @property
    def host_memory(self) -> int:
        """Bytes of host memory the snapshot buffers hold now (kept from one save to the next)."""
        return self._snapshot.nbytes

    @property
    def uses_snapshots(self) -> bool:
        return uses_snapshots(self.background)

    @routed
    def prepare(self, states: Dict[str, Any]) -> None:
        """
        Allocates the snapshot buffers for `states` ({role: object}, as a later `save` will get
        them) on the worker thread, so that the first save only copies: all of them for background
        saves, pinned buffers for the CUDA tensors of synchronous saves. They stay allocated for
        the saves that follow (the memory those saves need anyway), until the engine is dropped.
        Never waits: with a save in flight, there is nothing to do.
        """
        if not self.uses_snapshots or self.read_only or self._writer.busy:  # busy: a save made them
            return
        if (self.background or on_device(states)) and self._fits(states, devices_only=not self.background):
            self.check()
            self._writer.submit(lambda: self._snapshot.prepare(states, devices_only=not self.background))

    def _commit_or_warn(self, *args: Any) -> bool:
        try:
            self._commit(*args)
        except CheckpointSaveError as e:
            if self.on_save_error == "raise":
                raise
            logger.error("%s", e)
            return False
        return True

    @staticmethod
    def _sharded(states: Dict[str, Any]) -> List[str]:
        """The roles whose state holds DTensors: every rank writes them with DCP, at once."""
        return [role for role, state in states.items() if sharded.is_sharded(state)]

    def _commit(self, key, states, info, record, after_commit, retention) -> None:
        paths = self.store.files(key)
        collective = [role for role in self._sharded(states) if role in paths]
        temps, files = [], {}
        try:
            if collective:  # every rank; a failure on any rank raises on every rank
                os.makedirs(self.directory, exist_ok=True)
                for role in collective:
                    tmp, files[role] = sharded.save_temp(states[role], paths[role])
                    temps.append((tmp, paths[role]))
        except OSError as e:
            self._discard(temps)
            self._save_failed(key, e)  # on every rank: each raises
        if collective and RNG in states and distributed.world_size() > 1:
            # Every rank's random state, in the primary's file: each rank takes its own back.
            ranks: List[Any] = [None] * distributed.world_size()
            distributed.dist.all_gather_object(ranks, states[RNG], group=distributed.group())
            states = {**states, RNG: {PER_RANK: ranks}}
        failure: Optional[Exception] = None
        writes = self.primary or self.store.sharded  # AllenNLP's per-rank files: each rank its own
        if writes:
            try:
                self._write_and_commit(key, states, info, record, paths, temps, files, collective)
            except Exception as e:  # told to every rank first, when they wait for the outcome
                if not (isinstance(e, OSError) or collective):
                    raise
                failure = e
        if collective and distributed.world_size() > 1:
            # The primary's commit is the checkpoint's: every rank returns its outcome.
            outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
            distributed.dist.broadcast_object_list(outcome, src=0, group=distributed.group())
            if outcome[0] is not None and failure is None:
                raise CheckpointSaveError(
                    f"{self.where}: could not save checkpoint {self.store.label(key)} in {self.directory}: "
                    f"the primary rank failed to commit it, got {outcome[0]}. Earlier checkpoints are untouched."
                )
        if isinstance(failure, OSError):
            self._save_failed(key, failure)
        if failure is not None:
            raise failure
        if not writes:
            return
        self._last_size = sum(f["size"] for f in files.values())
        self._verified.add((key, self._last_size, info.time))
        if self._index is not None:
            self._index[key] = Entry(key, self.store.label(key), {r: paths[r] for r in files}, self._last_record,
                                     stores.entry_info(info.progress, info.time, self._last_size, self._last_record))
        logger.debug("Saved checkpoint %s in %s", self.store.label(key), self.directory)
        if after_commit is not None:
            after_commit(key)
        if retention is not None and self.may_write:
            self.retain(*retention)

    @staticmethod
    def _discard(temps: List[Tuple[str, str]]) -> None:
        for tmp, _ in temps:
            durable.remove_file(tmp)

    def _write_and_commit(self, key, states, info, record, paths, temps, files, collective) -> None:
        """Writes the other roles, renames every temp file into place, writes the record last."""
        try:
            self._check_free_space(key)
            os.makedirs(self.directory, exist_ok=True)
            for role, path in paths.items():
                if role in states and role not in collective:
                    tmp, files[role] = durable.save_temp(states[role], path, info.time, **self.save_kwargs)
                    temps.append((tmp, path))
        except BaseException:
            self._discard(temps)
            raise
        # A record of an earlier checkpoint of this key goes first: its files are about to change.
        durable.remove_file(self.store.record_path(key))
        durable.commit(temps)  # in order: the last role's file is renamed last
        full = stores.record(info.progress, info.time, info.metrics, info.total_batches_completed, info.is_best_so_far)
        full.update(versions=dict(versions()), world_size=_world_size(self.store))
        full.update(record or {}, files=files)
        if info.run_start is not None:
            full["run_start"] = info.run_start
        self.store.write_record(key, full)
        self._last_record = full

    def _check_free_space(self, key: Any) -> None:
        if self._last_size is None:  # the first save of this process: estimate from the newest on disk
            entries = self.entries(own_only=True)  # the listing retention reuses (the index)
            self._last_size = entries[-1].info.size_bytes if entries else 0
        try:
            free = shutil.disk_usage(self.directory).free
        except FileNotFoundError:
            return  # made by the save
        if self._last_size > free:
            raise OSError(
                errno.ENOSPC,
                f"not enough free space for checkpoint {self.store.label(key)}: it needs about "
                f"{self._last_size} bytes (the size of the last one), got {free} bytes free",
            )

    def _save_failed(self, key: Any, error: OSError) -> None:
        # The temp files were removed where the error struck; a state file already renamed into
        # place belongs to this incomplete checkpoint only. Only a writer of files removes them.
        for path in [*self.store.files(key).values(), self.store.record_path(key)] if self.primary or self.store.sharded else []:
            try:
                durable.remove_file(path)
            except OSError:
                pass
        raise CheckpointSaveError(
            f"{self.where}: could not save checkpoint {self.store.label(key)} in {self.directory}, got "
            f"{type(error).__name__}: {error}. Earlier checkpoints are untouched. Free disk space (or "
            f"lower what retention keeps, or add a disk_quota policy), check the directory is writable{self.save_error_hint}."
        ) from error

    @routed
    def check(self) -> None:
        """Raises the error of a background save (or upload) that failed since the last call (logs an upload's, with on_save_error "warn")."""
        self._writer.check()
        self._settle_or_warn(wait=False)

    def _settle_or_warn(self, wait: bool) -> None:
        if self._settle is None:
            return
        try:
            self._settle(wait=wait)
        except OSError as e:  # a failed upload: the local checkpoint is committed
            if self.on_save_error == "raise":
                raise
            logger.error("%s", e)

    @routed
    def wait(self) -> None:
        """Waits for a background save in flight; raises its error (or a failed upload's) if it failed."""
        self._writer.wait()
        self.check()

    @routed
    def drain(self) -> None:
        """Waits for a save in flight and for the uploads of the saves before (a store's, in the background); raises their errors."""
        self._writer.wait()
        self._writer.check()
        self._settle_or_warn(wait=True)

    @routed
    def close(self) -> None:
        """Waits for a save in flight, its uploads and deletions, releases the snapshot buffers, then gives up the directory's writer lock (and a bucket's)."""
        try:
            self.drain()
            durable.wait_for_discards()
        finally:  # a failed save or upload still lets the directory (and the bucket) go
            self._snapshot = Snapshotter()
            if self._lock is not None:
                if hasattr(self.store, "release"):  # a bucket prefix's lock (Mirrored)
                    self.store.release()
                unlock_directory(self._lock)
                self._lock = None
            self.read_only = True

    # ---- listing, retention, clean-up ----------------------------------------------------

    @routed
    def entries(self, own_only: bool = False) -> List[Entry]:
        """The complete checkpoints, oldest first (`own_only`: by this rank's files alone)."""
        if self._index is not None:
            return sorted(self._index.values(), key=self.store.order)
        entries = self.store.list(own_only).complete
        if self.may_write and not self.store.sharded:
            self._index = {e.key: e for e in entries}
        return entries

    @routed
    def judge(self, policy: "RetentionPolicy", select: Callable[[Entry], bool], now: float) -> Tuple[List[Entry], List[List[str]]]:
        """The checkpoints `policy` judges (those `select` picks), oldest first, with the rules that keep each."""
        candidates = [e for e in self.entries(own_only=True) if select(e)]
        # Judged by this rank's files (other ranks may still be writing the newest checkpoint);
        # the newest checkpoint complete on every rank is kept too.
        protected = {e.key for e in candidates[-1:]}
        if self.store.sharded:
            protected.update(e.key for e in self.store.list().complete[-1:])
        reasons = list(policy.explain([e.info for e in candidates], now))
        if len(reasons) != len(candidates):
            raise ValueError(
                f"{type(policy).__name__}.should_keep: must return one flag per checkpoint, got "
                f"{len(reasons)} flags for {len(candidates)} checkpoints. Return a list as long as "
                "its `checkpoints` argument."
            )
        for entry, reason in zip(candidates, reasons):
            if entry.key in protected:
                reason.append("newest complete checkpoint (always kept)")
        return candidates, reasons

    @routed
    def retain(self, policy: "RetentionPolicy", select: Callable[[Entry], bool] = lambda e: True) -> None:
        """Deletes the checkpoints among `select`'s that `policy` does not keep (never the newest)."""
        for entry, reasons in zip(*self.judge(policy, select, self.clock())):
            if not reasons:
                logger.info(
                    "Deleting checkpoint %s in %s: retention policy %s does not keep it",
                    entry.name, self.directory, policy.describe(),
                )
                self.store.remove(entry.key)
                if self._index is not None:
                    self._index.pop(entry.key, None)

    @routed
    def clean_up(self, listing: Optional[stores.Listing] = None) -> None:
        """
        Removes what crashes left: temp files of dead writers, records whose state files are all
        gone, checkpoints half-written or half-deleted (moved into corrupt/ instead when their
        record says they were complete once: something else removed a file).
        """
        if not self.may_write:
            return
        listing = listing or self.store.list()
        self._index = None  # listed afresh: rebuilt at the next save
        for key in listing.orphan_records:
            logger.info("Removing the record of %s, whose state files were deleted", self.store.label(key))
            self.store.remove(key)
        for path in listing.stale_temps:
            logger.info("Removing temp file %s left by an interrupted save", os.path.basename(path))
            durable.remove_file(path)
        if not listing.complete:
            return  # nothing complete: maybe the world size changed. Delete nothing we cannot replace.
        for key in listing.incomplete:
            if os.path.exists(self.store.record_path(key)):
                moved = self.store.quarantine(key)
                logger.warning(
                    "Checkpoint %s in %s lost a state file its record lists; moved %s into corrupt/",
                    self.store.label(key), self.directory, ", ".join(moved),
                )
                continue
            logger.warning(
                "Removing incomplete checkpoint %s in %s (an interrupted save or deletion)",
                self.store.label(key), self.directory,
            )
            self.store.remove(key)

    # ---- loading -------------------------------------------------------------------------

    @routed
    def load(
        self, entry: Entry, roles: Optional[Sequence[str]] = None, templates: Optional[Dict[str, Any]] = None,
        collective: bool = False,
    ) -> Dict[str, Any]:
        """
        Verifies `entry`'s files against its record, then loads them ({role: object}). A role of
        sharded state loads into `templates[role]` (the live state dicts; see `sharded.load`);
        `collective`: every rank loads at once, the primary having verified the checkpoint.
        """
        paths = {role: path for role, path in entry.paths.items() if roles is None or role in roles}
        checked = (entry.key, entry.info.size_bytes, entry.info.time) in self._verified
        try:
            with loading.allowing(self.safe_globals):
                # Sharded state is verified on every rank alike: each reaches the same verdict.
                loaded = loading.read(paths, entry.record.get("files", {}), templates, collective, checked)
        except loading.UnsafeCheckpoint as e:
            raise UnsafeCheckpointError(
                f"{self.where}: checkpoint {entry.name} in {self.directory} holds types that are not "
                f"allowed to load, got: {e} Nothing in it was run. If you trust this file, {self.trust_hint}"
            ) from e
        self._verified.add((entry.key, entry.info.size_bytes, entry.info.time))
        return loaded

    @routed
    def verify(self, entry: Entry) -> None:
        """Checks `entry` against its record (loads it when it has none); raises loading.BadCheckpoint."""
        if (entry.key, entry.info.size_bytes, entry.info.time) in self._verified:
            return
        expected = entry.record.get("files")
        if not expected:
            self.load(entry)
            return
        for role, path in entry.paths.items():
            loading.verify(path, expected[role])
        self._verified.add((entry.key, entry.info.size_bytes, entry.info.time))

    @routed
    def lagging_pointer(self, pointer: str, wanted: Optional[str]) -> Optional[Entry]:
        """
        The checkpoint named `wanted` by a face's pointer file (`last_checkpoint`, at `pointer`),
        when a newer one of ours (with a record) was committed after the pointer was last written:
        a save interrupted between its commit and the pointer's update. None otherwise: a pointer
        written after the newer checkpoint (someone chose an older one to resume from) is followed.
        """
        entries = self.entries()
        named = next((e for e in entries if e.name == wanted), None)
        committed = [e for e in entries if e.record]
        if named is None or not committed or self.store.order(committed[-1]) <= self.store.order(named):
            return None
        try:
            lagged = os.stat(self.store.record_path(committed[-1].key)).st_mtime_ns >= os.stat(pointer).st_mtime_ns
        except OSError:
            return None
        return named if lagged else None

    def newest_trusted(self) -> Optional[Entry]:
        """The newest checkpoint when this process wrote or checked it since it last listed; else None."""
        if not self._index:
            return None
        newest = max(self._index.values(), key=self.store.order)
        return newest if (newest.key, newest.info.size_bytes, newest.info.time) in self._verified else None

    @routed
    def newest_good(
        self, load: bool = True, prefer: Any = None, roles: Optional[Sequence[str]] = None,
        templates: Optional[Dict[str, Any]] = None,
    ) -> Optional[Tuple[Entry, Optional[Dict[str, Any]]]]:
        """
        The newest checkpoint that verifies (and, with `load`, loads: its states come with it),
        `prefer` (a key) tried first; bad ones are moved into corrupt/ with a WARNING. Cleans up
        first. None when there is no checkpoint at all. `templates` ({role: state dict}) receive
        sharded state; when they hold DTensors in a distributed run, every rank must call this.
        """
        self.wait()
        if templates and distributed.world_size() > 1 and self._sharded(templates):
            return self._newest_good_together(load, prefer, roles, templates)
        listing = self.store.list()
        self.clean_up(listing)
        entries = sorted(listing.complete, key=lambda e: e.key == prefer)  # stable: `prefer` last
        rejected = []
        for entry in reversed(entries):
            try:
                if load:
                    return entry, self.load(entry, roles, templates)
                self.verify(entry)
                return entry, None
            except loading.BadCheckpoint as e:
                rejected.append(f"{entry.name} ({e})")
                moved = self.store.quarantine(entry.key) if self.may_write else []
                logger.warning(
                    "Checkpoint %s in %s is not usable: %s. %sFalling back to an older checkpoint.",
                    entry.name, self.directory, e, f"Moved {', '.join(moved)} into corrupt/. " if moved else "",
                )
        if rejected:
            more = f" and {len(rejected) - 10} more" if len(rejected) > 10 else ""
            raise UnusableCheckpoint(
                f"{self.where}: no usable checkpoint in {self.directory}, got {len(rejected)} bad one(s): "
                f"{'; '.join(rejected[:10])}{more}. Their files are in {os.path.join(self.directory, 'corrupt')}; "
                "start a new run, or restore a good copy of one of them."
            )
        return None

    def _newest_good_together(self, load, prefer, roles, templates) -> Optional[Tuple[Entry, Optional[Dict[str, Any]]]]:
        """Sharded state: the primary verifies and chooses (falling back), every rank loads its shards of that choice."""
        choice: List[Any] = [None]
        if self.primary:
            try:
                found = self.newest_good(load=False, prefer=prefer)
                choice[0] = ("found", found[0].key) if found else ("none", None)
            except UnusableCheckpoint as e:
                choice[0] = ("unusable", str(e))
        distributed.dist.broadcast_object_list(choice, src=0, group=distributed.group())
        outcome, value = choice[0]
        if outcome == "unusable":
            raise UnusableCheckpoint(value)
        if outcome == "none":
            return None
        entry = next(e for e in self.store.list().complete if e.key == value)
        self._verified.add((entry.key, entry.info.size_bytes, entry.info.time))  # by the primary
        if not load:
            return entry, None
        try:
            return entry, self.load(entry, roles, templates, collective=True)
        except loading.BadCheckpoint as e:  # verified by the primary: the model does not fit it
            raise RuntimeError(
                f"{self.where}: checkpoint {entry.name} in {self.directory} verified, but did not load into "
                f"this model's sharded state, got: {e}. Load it into the model it was saved from."
            ) from e
