"""The fvcore face (see trainer_ckpt/fvcore.py, which imports it on first use)."""
import functools
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

import fvcore.common.checkpoint as _fvcore

from trainer_ckpt.faces.arguments import require_bools
from trainer_ckpt.core import distributed
from trainer_ckpt.core import loaders, preemption
from trainer_ckpt.io import sharded
from trainer_ckpt.stores.mirrored import local_place, mirrored
from trainer_ckpt.core.background import require_host_memory
from trainer_ckpt.core.rng import capture_rng, restore_rng
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine, UnsafeCheckpointError, uses_snapshots
from trainer_ckpt.core.logs import logs_to
from trainer_ckpt.stores import RNG, NamedFiles, named
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable
if TYPE_CHECKING:  # the policies import AllenNLP's Registrable: imported when a policy is given
    from trainer_ckpt.policies.retention import RetentionPolicy
    from trainer_ckpt.policies.save import SavePolicy

__all__ = ["Checkpointer", "PeriodicCheckpointer", "LAYOUT"]

logger = logging.getLogger("trainer_ckpt._fvcore_face")  # its 0.1 name, which users may filter on
MAIN = named.MAIN
POINTER = "last_checkpoint"
LAYOUT = named.FVCORE
DATA = "trainer_ckpt_data"  # the position of the loader `resumable` made, in the checkpoint
_WHERE = "trainer_ckpt.fvcore.Checkpointer"


def _logging_to_self_logger(method: Callable) -> Callable:
    """A Checkpointer method whose messages (of trainer_ckpt's loggers) go to `self.logger` too."""

    @functools.wraps(method)
    def routed(self: "Checkpointer", *args: Any, **kwargs: Any) -> Any:
        with logs_to(self.logger):
            return method(self, *args, **kwargs)

    return routed


class Checkpointer(_fvcore.Checkpointer):
    """
    fvcore's `Checkpointer(model, save_dir="", *, save_to_disk=True, **checkpointables)`, plus:

    background : `bool` (default `False`)
        `save()` copies the state into reused CPU buffers and returns; a worker thread writes it.
        `wait()` waits for it (finding or loading checkpoints waits too, and so does process exit).
    max_host_memory : `int` (default `None`)
        Bytes the background snapshot's buffers may take: a state that needs more is saved on the
        training thread from the live tensors instead (the loop waits for the write). None: no bound.
    restore_rng : `bool` (default `True`)
        `resume_or_load(..., resume=True)` puts back the random state saved with the checkpoint
        (python, numpy, torch, every CUDA device), for a bit-exact resume.
    safe_globals : `Sequence[type]` (default `()`)
        Your own types that may be unpickled from checkpoints you trust; all else loads with
        `weights_only=True`.
    save_dir may be an fsspec URL (`"s3://bucket/run"`): checkpoints are written into a local
    staging directory first (`staging_dir`, default one per URL under the temp directory;
    `save_dir` then names it), then uploaded whole, record last; `max_to_keep` deletes in the
    bucket too; with an empty staging directory (a new machine) `has_checkpoint()` and
    `resume_or_load` download the bucket's checkpoints. `storage_options` go to fsspec.
    A torchdata `StatefulDataLoader` among the checkpointables resumes exactly (workers' random
    augmentation included); a loop that builds its loader after `resume_or_load` uses `resumable`.
    Messages (a fallback to an older checkpoint, one moved into `corrupt/`) go to `self.logger`
    (fvcore's "fvcore.common.checkpoint", which detectron2's `setup_logger` formats) besides
    trainer_ckpt's own loggers.
    """

    def __init__(
        self,
        model: Any,
        save_dir: str = "",
        *,
        save_to_disk: bool = True,
        background: bool = False,
        restore_rng: bool = True,
        safe_globals: Sequence[Any] = (),
        storage_options: Optional[Dict[str, Any]] = None,
        staging_dir: Optional[str] = None,
        max_host_memory: Optional[int] = None,
        **checkpointables: Any,
    ) -> None:
        require_bools(_WHERE, background=background, restore_rng=restore_rng)
        require_host_memory(_WHERE, max_host_memory)
        save_dir, self.url = local_place(_WHERE, "save_dir", save_dir, storage_options, staging_dir)
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._store = mirrored(NamedFiles(self.save_dir, LAYOUT), self.url, storage_options, _WHERE)
        self.background, self.restore_rng, self.safe_globals = background, restore_rng, list(safe_globals)
        self.max_host_memory = max_host_memory
        self._engine: Optional[Engine] = None
        self._preloaded: Optional[tuple] = None  # (path, checkpoint) handed from resume to fvcore's load
        self._prepared = False  # the background snapshot's buffers
        self._position: Optional["_Position"] = None  # the loader `resumable` made
        self._resumed: Optional[tuple] = None  # (random state before the resume, the checkpoint's, its DATA)
        for obj in self.checkpointables.values():
            if loaders.is_stateful(obj):
                loaders.prepare(obj)

    @property
    def engine(self) -> Engine:
        """The engine, made at first use: only then does a writer take the directory's lock."""
        if self._engine is None:
            # Sharded state (FSDP2) is written by every rank; `save_to_disk` names the primary.
            self._engine = Engine(
                self._store, background=self.background, safe_globals=self.safe_globals,
                read_only=not self.save_to_disk and distributed.world_size() == 1, primary=self.save_to_disk,
                where=_WHERE, logger=self.logger, max_host_memory=self.max_host_memory,
            )
            self._engine.clean_up()
        return self._engine

    def save(self, name: str, **kwargs: Any) -> None:
        self._save(name, kwargs)

    def _save(self, name: str, kwargs: Dict[str, Any], retention=None) -> None:
        if not self.save_dir:
            return
        data = {"model": self.model.state_dict()}
        if not self.save_to_disk and not sharded.is_sharded(data):
            return
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self._position is not None:
            data[DATA] = self._position.state_dict()
        data.update(kwargs)
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        if self.save_to_disk:
            self.logger.info("Saving checkpoint to {}".format(save_file))
        done = kwargs.get("iteration")
        done = done + 1 if isinstance(done, int) and not isinstance(done, bool) else None
        info = CheckpointInfo(0, done or 0, time=self.engine.clock(), total_batches_completed=done)
        self.engine.save(name, {MAIN: data, RNG: capture_rng()}, info, after_commit=self._tag, retention=retention)

    def prepare(self) -> None:
        """
        With `background=True` (or CUDA state): allocates the snapshot buffers for the state `save`
        will copy, on the worker thread, so that the first save only copies.
        `PeriodicCheckpointer.step` calls it at its first iteration that does not save; the
        buffers stay for the saves that follow.
        """
        if uses_snapshots(self.background) and self.save_dir and self.save_to_disk:
            data = {"model": self.model.state_dict(), **{k: obj.state_dict() for k, obj in self.checkpointables.items()}}
            if not sharded.is_sharded(data):
                self.engine.prepare({MAIN: data})
        self._prepared = True

    def _tag(self, name: str) -> None:
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Points `last_checkpoint` at a file, atomically (fvcore rewrites it in place)."""
        payload = last_filename_basename.encode()
        durable.atomic_write(os.path.join(self.save_dir, POINTER), lambda f: f.write(payload))

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed."""
        if self._engine is not None:
            self._engine.wait()

    @_logging_to_self_logger
    def has_checkpoint(self) -> bool:
        """As fvcore's (`last_checkpoint` exists); also true when it does not but a checkpoint of
        ours was committed (a save interrupted before its first `last_checkpoint`): resume finds it."""
        self.wait()
        if self.url is not None and self.save_dir and not super().has_checkpoint():
            entries = self.engine.entries()  # an empty staging directory is filled from the bucket
            if entries:
                self.tag_last_checkpoint(os.path.basename(entries[-1].paths[MAIN]))
        if super().has_checkpoint():
            return True
        return bool(self.save_dir) and any(entry.record for entry in self._store.list().complete)

    def get_checkpoint_file(self) -> str:
        self.wait()
        return super().get_checkpoint_file()

    def get_all_checkpoint_files(self) -> List[str]:
        self.wait()
        return super().get_all_checkpoint_files()

    @_logging_to_self_logger
    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """
        As fvcore's; resuming loads the newest checkpoint that verifies, starting with the one
        `last_checkpoint` names, and falls back to older ones with a WARNING when it is
        missing, truncated or altered (those are moved into `corrupt/`). When a newer checkpoint
        was committed after `last_checkpoint` was written (a save interrupted in between), or
        `last_checkpoint` is missing, it starts with the newest committed one (logged at INFO).
        """
        if not (resume and self.save_dir and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        pointer = os.path.join(self.save_dir, POINTER)
        wanted = os.path.basename(self.get_checkpoint_file()) if os.path.exists(pointer) else ""
        prefer = LAYOUT.parse(wanted) if wanted else None
        lag = self.engine.lagging_pointer(pointer, prefer)
        if lag is not None:
            prefer = None  # the newest first: it was committed after the pointer was written
        found = self.engine.newest_good(prefer=prefer, templates=self._templates())
        if found is None:
            logger.warning("%s names %s, which is missing, and no other checkpoint is in %s", POINTER, wanted, self.save_dir)
            return self.load(path, checkpointables=[])
        entry, states = found
        used = os.path.basename(entry.paths[MAIN])
        if not wanted:
            logger.info("%s is missing in %s (a save was interrupted before writing it): resuming from %s, the newest "
                        "committed checkpoint", POINTER, self.save_dir, used)
        elif lag is not None and entry.info.time >= lag.info.time and used != wanted:
            logger.info("%s names %s, but %s is newer and committed (a save was interrupted before updating %s): "
                        "resuming from %s", POINTER, wanted, used, POINTER, used)
        elif used != wanted:
            logger.warning(
                "%s names %s, which is missing or not usable: resuming from %s instead, the newest good checkpoint in %s",
                POINTER, wanted, used, self.save_dir,
            )
        self._preloaded = (entry.paths[MAIN], states[MAIN])
        try:
            extra = self.load(entry.paths[MAIN])
        finally:
            self._preloaded = None
        for obj in self.checkpointables.values():
            if loaders.is_stateful(obj):
                loaders.prime(obj)  # its iterator's draws come before the random state goes back
        before = capture_rng()
        if self.restore_rng and RNG in states:
            restore_rng(states[RNG])
        self._resumed = (before, states[RNG] if self.restore_rng and RNG in states else None, extra.pop(DATA, None))
        return extra

    def resumable(self, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        `build(*args, **kwargs)`, a data loader that goes on where the resumed checkpoint's left
        off: the one line a loop that builds its loader after `resume_or_load` changes
        (detectron2's `plain_train_net.py`: `data_loader = checkpointer.resumable(
        build_detection_train_loader, cfg)`). Its position is saved with every checkpoint.

        The loader is built, and its iterator made, under the random state the run had before
        `resume_or_load` put the checkpoint's back, as in the interrupted run (detectron2's
        `TrainingSampler` draws its seed then); then it is positioned, and the checkpoint's
        random state goes back. A torchdata `StatefulDataLoader` loads its state; any other
        loader (an infinite sampler's) reads and drops the batches the run had taken: exact,
        workers included, at the cost of loading them again.
        """
        resumed, self._resumed = self._resumed, None
        if resumed is None or resumed[2] is None:
            self._position = _Position(build(*args, **kwargs))
            return self._position
        before, checkpoint_rng, state = resumed
        restore_rng(before)
        self._position = _Position(build(*args, **kwargs), state)
        if checkpoint_rng is not None:
            restore_rng(checkpoint_rng)
        return self._position

    @_logging_to_self_logger
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """As fvcore's; a checkpoint of sharded state is a directory (DCP's), each rank loading its shards."""
        if not (path and os.path.isdir(path)):
            return super().load(path, checkpointables)
        self.logger.info("[Checkpointer] Loading from {} ...".format(path))
        checkpoint = self._load_file(path)
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info("Loading {} from {} ...".format(key, path))
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def _templates(self) -> Optional[Dict[str, Any]]:
        """For sharded state in a distributed run: the live state dicts that every rank loads its shards into."""
        model = self.model.state_dict()
        if distributed.world_size() == 1 or not sharded.is_sharded(model):
            return None
        return {MAIN: {"model": model, **{key: sharded.template(obj) for key, obj in self.checkpointables.items()}}}

    def _load_file(self, f: str) -> Dict[str, Any]:
        """Loads with `weights_only=True`; a checkpoint of ours is verified against its record first."""
        if self._preloaded is not None and self._preloaded[0] == f:
            return self._preloaded[1]
        name = LAYOUT.parse(os.path.basename(f))
        if self.save_dir and name is not None and os.path.samefile(os.path.dirname(f) or ".", self.save_dir):
            entry = next((e for e in self.engine.entries() if e.name == name), None)
            if entry is not None:
                templates = self._templates()
                return self.engine.load(entry, [MAIN], templates, collective=bool(templates))[MAIN]
        # Elsewhere (a copy, a file a peer wrote): checked against its record when it has one.
        entry = NamedFiles(os.path.dirname(f) or ".", LAYOUT).entry(name) if name is not None else None
        try:
            with loading.allowing(self.safe_globals):
                return loading.read({MAIN: f}, entry.record.get("files", {}) if entry else {})[MAIN]
        except loading.UnsafeCheckpoint as e:
            raise UnsafeCheckpointError(
                f"{_WHERE}: {f} holds types that are not allowed to load, got: {e} Nothing in it was "
                "run. If you trust this file, pass those types in `safe_globals`."
            ) from e



class PeriodicCheckpointer(_fvcore.PeriodicCheckpointer):
    """
    fvcore's `PeriodicCheckpointer(checkpointer, period, max_iter=None, max_to_keep=None,
    file_prefix="model")`: saves `{file_prefix}_{iteration:07d}` when `(iteration + 1) % period
    == 0` and `{file_prefix}_final` at `max_iter - 1`; `max_to_keep` keeps the newest periodic
    ones (counting those already on disk after a restart). Instead of `period` / `max_to_keep`:

    save_policy : `SavePolicy` (default `None`)
        When to save a periodic checkpoint; it sees `(epochs 0, batches iteration + 1)`, e.g.
        `SaveEveryNumBatches(1000, restart_each_epoch=False)`.
    retention_policy : `RetentionPolicy` (default `None`)
        Which periodic checkpoints to keep, e.g. `KeepAny([KeepMostRecentByCount(3),
        KeepEveryNumBatches(10000)])`. `{file_prefix}_final` and checkpoints saved by name are
        never deleted.
    save_on_signals : `List[Union[str, int]]` (default `None`)
        Signals to save on (`["SIGTERM", "SIGUSR1"]`: what SLURM and spot VMs send before a kill).
        The handler only records the signal; the next `step(iteration)` (on every rank: they agree)
        saves `{file_prefix}_{iteration:07d}` as a periodic save would (unless one was saved at
        this iteration), waits until it is written (and uploaded), then exits the process with
        status 128 + the signal's number. A handler installed before is still called.
    exit_on_signal : `bool` (default `True`)
        False: after that save, training goes on.
    `close()` stops listening for the signals; the step at `max_iter - 1` does so too.
    """

    def __init__(
        self,
        checkpointer: _fvcore.Checkpointer,
        period: Optional[int] = None,
        max_iter: Optional[int] = None,
        max_to_keep: Optional[int] = None,
        file_prefix: str = "model",
        *,
        save_policy: Optional["SavePolicy"] = None,
        retention_policy: Optional["RetentionPolicy"] = None,
        save_on_signals: Optional[Sequence[Union[str, int]]] = None,
        exit_on_signal: bool = True,
    ) -> None:
        where = "trainer_ckpt.fvcore.PeriodicCheckpointer"
        require_bools(where, exit_on_signal=exit_on_signal)
        signals = preemption.parse(where, "save_on_signals", save_on_signals)
        if signals and not isinstance(checkpointer, Checkpointer):
            raise ValueError(
                f"{where}: `save_on_signals` needs a trainer_ckpt.fvcore.Checkpointer, got {type(checkpointer).__name__}. "
                "Checkpoint the run with trainer_ckpt.fvcore.Checkpointer (see the guide's detectron2 section)."
            )
        if (period is None) == (save_policy is None):
            raise ValueError(
                f"{where}: give exactly one of `period` and `save_policy`, got period={period!r} and "
                f"save_policy={save_policy!r}. Use period=N for fvcore's rule, or a SavePolicy."
            )
        if period is not None and (isinstance(period, bool) or int(period) < 1):
            raise ValueError(f"{where}: `period` must be an integer >= 1, got {period!r}. Save every N iterations with N >= 1.")
        if max_to_keep is not None and retention_policy is not None:
            raise ValueError(
                f"{where}: give at most one of `max_to_keep` and `retention_policy`, got {max_to_keep!r} and "
                f"{retention_policy!r}. Express the whole rule in the retention policy."
            )
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"{where}: `max_to_keep` must be an integer >= 1, got {max_to_keep!r}. Use None to keep all.")
        super().__init__(checkpointer, period or 1, max_iter, max_to_keep, file_prefix)
        self.save_policy = save_policy
        if retention_policy is None and max_to_keep is not None:
            from trainer_ckpt.policies.retention import KeepMostRecentByCount

            retention_policy = KeepMostRecentByCount(max_to_keep)
        periodic = re.compile(rf"^{re.escape(file_prefix)}_\d{{7}}$")
        self._retention = None if retention_policy is None else (retention_policy, lambda e: bool(periodic.match(e.name)))
        self._previous: List[CheckpointInfo] = []
        self._preemption = preemption.Preemption(signals, exit=exit_on_signal, where=where)

    def step(self, iteration: int, **kwargs: Any) -> None:
        if not isinstance(self.checkpointer, Checkpointer):
            return super().step(iteration, **kwargs)  # a plain fvcore checkpointer: fvcore's rules
        iteration = int(iteration)
        additional_state = {"iteration": iteration}
        additional_state.update(kwargs)
        final = self.max_iter is not None and iteration >= self.max_iter - 1
        if self.save_policy is None:
            periodic = (iteration + 1) % self.period == 0
        else:
            now = self.checkpointer.engine.clock()
            current = CheckpointInfo(0, iteration + 1, time=now, total_batches_completed=iteration + 1, training_ends=final)
            if not self._previous:  # where this process (re)started
                self._previous.append(CheckpointInfo(0, iteration, time=now, total_batches_completed=iteration))
            periodic = distributed.should_save(self.save_policy, current, self._previous)
            if periodic:
                self._previous.append(current)
        if periodic:
            self._save_periodic(iteration, additional_state)
        elif not final and not self.checkpointer._prepared:
            self.checkpointer.prepare()
        if final:
            self.checkpointer.save(f"{self.file_prefix}_final", **additional_state)
        signum = self._preemption.requested()  # every rank, every step: a collective
        if signum is not None:
            if not (periodic or final):  # else this iteration's state is saved already
                self._save_periodic(iteration, additional_state)
                if self.save_policy is not None:  # the policy counts it as it counts a periodic save
                    self._previous.append(CheckpointInfo(0, iteration + 1, time=self.checkpointer.engine.clock(),
                                                         total_batches_completed=iteration + 1))
            self._preemption.finish(signum, self.checkpointer.engine.drain)
        if final:
            self.close()

    def _save_periodic(self, iteration: int, additional_state: Dict[str, Any]) -> None:
        name = "{}_{:07d}".format(self.file_prefix, iteration)
        self.checkpointer._save(name, additional_state, retention=self._retention)

    def close(self) -> None:
        """Stops listening for `save_on_signals` (the handlers installed before come back)."""
        self._preemption.close()


for _public in (Checkpointer, PeriodicCheckpointer):
    _public.__module__ = "trainer_ckpt.fvcore"


class _Position:
    """
    The loader `Checkpointer.resumable` hands out, positioned when made (before the random state
    goes back). A `StatefulDataLoader` goes on epoch after epoch, each `iter()` one; any other
    loader is one stream of batches (detectron2's are endless), counted to be skipped on resume.
    """

    def __init__(self, loader: Any, state: Optional[Dict[str, Any]] = None) -> None:
        self.loader, self.taken = loader, 0
        self.stateful = loaders.is_stateful(loader)
        if self.stateful:
            loaders.prepare(loader)
            if state is not None:
                loaders.restore(loader, state["loader"])  # its next `iter()` goes on where it was
            return
        self._stream = iter(loader)
        for _ in range(int(state["taken"]) if state is not None else 0):
            next(self._stream)  # loaded again and dropped: its workers' random state moves on as it did
            self.taken += 1

    def __iter__(self) -> Any:
        return iter(self.loader) if self.stateful else self

    def __next__(self) -> Any:
        batch = next(self._stream)
        self.taken += 1
        return batch

    def state_dict(self) -> Dict[str, Any]:
        return {"loader": self.loader.state_dict()} if self.stateful else {"taken": self.taken}
