import contextlib
import errno
import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Tuple, Union

import torch

import torch.distributed as dist
from allennlp.common.checks import ConfigurationError
from allennlp.common.util import is_distributed
from allennlp.training.callbacks import TrainerCallback
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer
from allennlp.training.trainer import Trainer, TrainerCheckpoint

from trainer_ckpt import resume, storage
from trainer_ckpt.background import BackgroundWriter, Snapshotter
from trainer_ckpt._validate import WHERE as _WHERE
from trainer_ckpt._validate import flag
from trainer_ckpt.flat_keys import _UNSET, Count as _Count, Flag as _Flag, Seconds as _Seconds
from trainer_ckpt.flat_keys import retention_policy_from, save_policy_from
from trainer_ckpt.lock import lock_directory, unlock_directory
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.retention_policies import RetentionPolicy
from trainer_ckpt.save_policies import SavePolicy

logger = logging.getLogger(__name__)


class Checkpointer(AllenNlpCheckpointer):
    """
    trainer_ckpt's registrable base: the trainer contract of AllenNLP 2.10.1
    (`maybe_save_checkpoint`, `save_checkpoint`, `find_latest_checkpoint`, `load_checkpoint`,
    `state_is_sharded`) plus 2.4's `restore_checkpoint` and `best_model_state`, which are
    derived here from the others. A subclass of AllenNLP's `Checkpointer`, so the trainer's type
    hints hold, with a registry of its own: `"default"` is `DefaultCheckpointer`, and
    `@Checkpointer.register("mine")` adds yours without touching AllenNLP's names.
    """

    default_implementation = "default"

    def __init__(self, serialization_dir: Union[str, os.PathLike]) -> None:
        # AllenNLP's __init__ is deliberately not called: it would build its own flat-key state.
        self._serialization_dir = str(serialization_dir)
        self._rank = dist.get_rank() if is_distributed() else 0
        self._world_size = dist.get_world_size() if is_distributed() else 1
        self.state_is_sharded = False

    def maybe_save_checkpoint(
        self, trainer: Trainer, num_epochs_completed: int, num_batches_in_epoch_completed: int
    ) -> bool:
        raise NotImplementedError

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def find_latest_checkpoint(self) -> Optional[Tuple[str, str]]:
        raise NotImplementedError

    def load_checkpoint(self) -> Optional[TrainerCheckpoint]:
        raise NotImplementedError

    def restore_checkpoint(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """AllenNLP 2.4's API: `(model_state, training_state)`, or two empty dicts when there is nothing."""
        checkpoint = self.load_checkpoint()
        if checkpoint is None:
            return {}, {}
        return checkpoint.model_state, checkpoint.trainer_state

    def best_model_state(self) -> Dict[str, Any]:
        """AllenNLP 2.4's API: the model state in `best.th`, or an empty dict when there is none."""
        path = os.path.join(self._serialization_dir, "best.th")
        if not os.path.isfile(path):
            return {}
        logger.info("Loading best weights from %s", path)
        return storage.load(path)


class CheckpointSaveError(RuntimeError):
    """A save failed (full disk, I/O error, read-only directory); earlier checkpoints are intact."""


def _info(found: storage.Found) -> CheckpointInfo:
    return CheckpointInfo(
        *found.progress,
        time=found.time,
        metrics=found.record.get("metrics", {}),
        total_batches_completed=found.record.get("total_batches_completed"),
        is_best_so_far=found.record.get("is_best_so_far", False),
        size_bytes=found.size_bytes,
        run_start=found.record.get("run_start"),
    )


def _flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _name(progress: Tuple[int, int]) -> str:
    return f"e{progress[0]}_b{progress[1]}"


@functools.lru_cache(maxsize=None)
def _versions() -> Dict[str, str]:
    import allennlp.version

    import trainer_ckpt

    return {"trainer_ckpt": trainer_ckpt.__version__, "torch": torch.__version__, "allennlp": allennlp.version.VERSION}


def _import_global(name: Any) -> Any:
    """`"pkg.module.Class"` -> the class, for `safe_globals`."""
    module, _, attribute = str(name).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigurationError(
            f"{_WHERE}: `safe_globals` entries must be importable fully qualified names, got "
            f"{name!r} ({e}). Write e.g. \"my_pkg.states.MyState\", and make its package importable."
        ) from e



# save_checkpoint's two generations, bound (never called) to tell them apart.
_P = inspect.Parameter
_SAVE_2_10 = inspect.Signature([_P("trainer", _P.POSITIONAL_OR_KEYWORD)])
_SAVE_2_4 = inspect.Signature(
    [
        _P("epoch", _P.POSITIONAL_OR_KEYWORD),
        _P("trainer", _P.POSITIONAL_OR_KEYWORD),
        _P("is_best_so_far", _P.POSITIONAL_OR_KEYWORD, default=False),
    ]
)


@AllenNlpCheckpointer.register("trainer_ckpt")
@Checkpointer.register("default")
class DefaultCheckpointer(Checkpointer):
    """
    Saves model state and training state in separate files with AllenNLP's names
    (`model_state_e{E}_b{B}.th`, `training_state_e{E}_b{B}.th`, `_w{rank}` per rank when the
    state is sharded), crash-safely: a checkpoint counts once both files are complete, and
    retention never deletes the newest complete checkpoint, `best.th`, or any other file.

    When to save and what to keep are policies. AllenNLP's flat keys (both generations) are
    shorthand that builds the same policies; give either a policy or its flat keys, not both.

    # Parameters

    serialization_dir : `str`
        Given by the trainer; not a config key.
    save_policy : `SavePolicy`, optional (default=`"completed_epochs"`)
        When to save, e.g. `{"type": "any", "policies": ["completed_epochs",
        {"type": "every_num_batches", "num_batches": 100}]}`.
    retention_policy : `RetentionPolicy`, optional (default=`{"type": "most_recent_by_count", "count": 2}`)
        Which checkpoints to keep, e.g. `"all"`.
    save_completed_epochs : `bool`, optional (default=`True`)
        AllenNLP 2.10: save at the end of every epoch.
    save_every_num_seconds : `float`, optional (default=`None`)
        AllenNLP 2.10: save when this many seconds passed since the last save. Not in distributed runs.
    save_every_num_batches : `int`, optional (default=`None`)
        AllenNLP 2.10: save every this many batches within an epoch.
    keep_most_recent_by_count : `int`, optional (default=`2`)
        AllenNLP 2.10: keep this many newest checkpoints; `null` keeps all (unless an age is set).
    keep_most_recent_by_age : `float`, optional (default=`None`)
        AllenNLP 2.10: also keep checkpoints younger than this many seconds.
    num_serialized_models_to_keep : `int`, optional
        AllenNLP 2.4's name for `keep_most_recent_by_count`; `null` or `-1` keeps all.
    keep_serialized_model_every_num_seconds : `float`, optional (default=`None`)
        AllenNLP 2.4: also keep, permanently, checkpoints at least this many seconds apart.
    model_save_interval : `float`, optional (default=`None`)
        AllenNLP 2.4's name for `save_every_num_seconds`.
    on_save_error : `str`, optional (default=`"raise"`)
        What a save that fails (a full disk, an I/O error, a read-only directory) does, after it
        removed its own partial files: `"raise"` stops training with a clear error; `"warn"` logs
        it and lets training go on. Earlier checkpoints are untouched either way.
    safe_globals : `List[str]`, optional (default=`[]`)
        Fully qualified names of your own types that may be unpickled from checkpoints you trust,
        e.g. `["my_pkg.MyState"]`. Everything else loads with `weights_only=True`.
    read_only : `bool`, optional (default=`False`)
        Only find and load: no lock on the directory, no saving, no clean-up. For tools that look
        at a run while it trains.
    background : `bool`, optional (default=`False`)
        Save in the background: the call copies the state to CPU memory (into buffers reused
        between saves) and returns; a worker thread writes, commits and applies retention. One save
        is in flight at most; its error is raised at the next call, at the end of training, or by
        `wait()`. Finding and loading checkpoints wait for it first. Off by default because it
        keeps a second copy of the whole state in host memory, and because AllenNLP's trainer
        waits for it anyway at every epoch end that improves the validation metric (it links
        `best.th` to the new checkpoint right away).
    restore_rng : `bool`, optional (default=`True`)
        On resume, put back every random generator (python, numpy, torch, each CUDA device) and
        the AMP grad scaler as they were at the checkpoint, so the run goes on exactly as if never
        interrupted. `false` resumes with fresh randomness (the states are still saved).
    filename_prefix : `str`, optional (default=`""`)
        Put before every file name (`best_model_state_e3_b0.th`), so that several checkpointers
        share a directory without touching each other's files. AllenNLP's own checkpointer reads
        unprefixed names only.
    clock : `Callable[[], float]`, optional (default=`time.time`)
        For tests and embedding only, not a config key: the clock policies see.
    """

    def __init__(
        self,
        serialization_dir: Union[str, os.PathLike],
        save_policy: Optional[SavePolicy] = None,
        retention_policy: Optional[RetentionPolicy] = None,
        save_completed_epochs: _Flag = _UNSET,
        save_every_num_seconds: _Seconds = None,
        save_every_num_batches: _Count = None,
        keep_most_recent_by_count: _Count = _UNSET,
        keep_most_recent_by_age: _Seconds = None,
        num_serialized_models_to_keep: _Count = _UNSET,
        keep_serialized_model_every_num_seconds: _Seconds = None,
        model_save_interval: _Seconds = None,
        filename_prefix: str = "",
        on_save_error: str = "raise",
        safe_globals: Optional[List[str]] = None,
        read_only: bool = False,
        restore_rng: bool = True,
        background: bool = False,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        super().__init__(serialization_dir)
        if on_save_error not in ("raise", "warn"):
            raise ConfigurationError(
                f'{_WHERE}: `on_save_error` must be "raise" or "warn", got {on_save_error!r}. '
                'Use "warn" to log a failed save and let training go on.'
            )
        self._on_save_error = on_save_error
        self._safe_globals = [_import_global(name) for name in safe_globals or []]
        self._read_only = read_only
        if clock is not None and not callable(clock):
            raise ConfigurationError(
                f"{_WHERE}: `clock` must be a callable returning seconds, got {clock!r}. "
                "It is for code and tests only; remove it from the config."
            )
        self._clock: Callable[[], float] = clock or time.time
        self._save_policy = save_policy_from(
            save_policy,
            save_completed_epochs,
            save_every_num_seconds,
            save_every_num_batches,
            model_save_interval,
        )
        self._retention_policy = retention_policy_from(
            retention_policy,
            keep_most_recent_by_count,
            keep_most_recent_by_age,
            num_serialized_models_to_keep,
            keep_serialized_model_every_num_seconds,
        )
        if self._world_size > 1 and self._save_policy.depends_on_clock:
            # Ranks would decide at different batches; a sharded checkpoint would never complete.
            raise ConfigurationError(
                f"{_WHERE}: time-based saving is not supported in distributed training, got "
                f"save policy {type(self._save_policy).__name__} with world size "
                f"{self._world_size}. Save by batches or epochs instead."
            )
        if not isinstance(filename_prefix, str) or not re.fullmatch(r"[A-Za-z0-9_\-]*", filename_prefix):
            raise ConfigurationError(
                f"{_WHERE}: `filename_prefix` must be letters, digits, '_' or '-', got "
                f"{filename_prefix!r}. Use e.g. \"best_\"."
            )
        self._dir = storage.CheckpointDir(self._serialization_dir, filename_prefix)
        self._listener = _MetricsListener()
        self._resume = resume.ResumeTracker(restore=flag(_WHERE, "restore_rng", restore_rng))
        self._background = flag(_WHERE, "background", background)
        self._snapshot = Snapshotter()
        self._writer = BackgroundWriter()
        self._listener.on_training_end = self.wait
        self._config: Optional[Dict[str, Any]] = None
        self._verified: set = set()  # checkpoints this process wrote or checked: no second read
        self._last_size: Optional[int] = None  # bytes of the last checkpoint: the next one's estimate
        self._config_sha256: Optional[str] = None
        self._index: Optional[Dict[Tuple[int, int], Tuple[storage.Found, CheckpointInfo]]] = None
        self._lock = lock_directory(self._serialization_dir) if not read_only and self._is_primary else None
        # Where this run saved, oldest first; starts with the point it (re)started from.
        self._previous: List[CheckpointInfo] = [CheckpointInfo(0, 0, self._clock())]
        # When the run started: recorded with every checkpoint and taken back on resume, so time
        # windows count from the first start of the run, however often it is restarted.
        self._run_start = self._previous[0].time

    # ---- saving --------------------------------------------------------------------------

    def maybe_save_checkpoint(
        self, trainer: Trainer, num_epochs_completed: int, num_batches_in_epoch_completed: int
    ) -> bool:
        """Called by the trainer after every batch and epoch; saves when the save policy says so."""
        self._writer.check()  # a background save that failed since the last call
        current = self._moment(trainer, num_epochs_completed, num_batches_in_epoch_completed)
        if not self._save_policy.should_save(current, self._previous):
            return False
        try:
            self._save(trainer, current)
        except CheckpointSaveError as e:
            if self._on_save_error == "raise":
                raise
            logger.error("%s", e)
            return False
        return True

    def _moment(self, trainer: Trainer, epochs: int, batches: int) -> CheckpointInfo:
        """Stamps the point the trainer reached, with what the trainer knows there."""
        listener = self._listener.attach(trainer)
        metrics, is_best, ends = {}, False, False
        if batches == 0 and listener.epochs_validated == epochs:
            # Validation ran for the epoch that just ended (the trainer saves after validating).
            metrics = listener.metrics
            tracker = getattr(trainer, "_metric_tracker", None)
            is_best = tracker is not None and tracker.is_best_so_far()
        if batches == 0:
            tracker = getattr(trainer, "_metric_tracker", None)
            num_epochs = getattr(trainer, "_num_epochs", None)
            ends = (num_epochs is not None and epochs >= num_epochs) or (
                tracker is not None and tracker.should_stop_early()
            )
        return CheckpointInfo(
            epochs,
            batches,
            time=self._clock(),
            metrics=metrics,
            total_batches_completed=getattr(trainer, "_total_batches_completed", None),
            is_best_so_far=is_best,
            training_ends=ends,
        )

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """
        Saves now. `save_checkpoint(trainer)` (AllenNLP 2.10) or
        `save_checkpoint(epoch, trainer, is_best_so_far=False)` (AllenNLP 2.4: `epoch` is the
        0-based index of the epoch just finished; `is_best_so_far` also links `best.th`).
        """
        try:
            bound = _SAVE_2_10.bind(*args, **kwargs)
        except TypeError:
            bound = _SAVE_2_4.bind(*args, **kwargs)
        arguments = bound.arguments
        try:
            paths = self._save(arguments["trainer"], None, arguments.get("epoch"), arguments.get("is_best_so_far"))
        except CheckpointSaveError as e:
            if self._on_save_error == "raise":
                raise
            logger.error("%s", e)
            return
        if arguments.get("is_best_so_far") and paths is not None:
            _link_or_copy(paths[0], os.path.join(self._serialization_dir, "best.th"))

    def _save(
        self,
        trainer: Trainer,
        current: Optional[CheckpointInfo],
        epoch: Optional[int] = None,
        is_best_so_far: bool = False,
    ) -> Optional[Tuple[str, str]]:
        if self._read_only:
            raise RuntimeError(f"{_WHERE}: this checkpointer is read-only, got a save request. Build it with read_only=False.")
        self._writer.wait()  # at most one save in flight; the snapshot buffers are free again
        self._writer.check()
        with _checkpoint_state(trainer) as state:
            progress = _progress(state[1], current, epoch) if state is not None else current and current.progress
            if progress is None:
                return None
            # Every rank's random state goes into the primary's file (a collective in distributed runs).
            resume_state = self._resume.state(trainer, *progress, self._world_size)
            if state is None:
                # A non-primary rank with unsharded state: the primary writes. The cadence still
                # advances here, so every rank keeps deciding alike.
                if current is not None:
                    self._previous.append(current)
                return None
            model_state, training_state = state
            resume_state["config"] = self._run_config()
            training_state = {**training_state, resume.KEY: resume_state}
            if current is None:
                current = CheckpointInfo(*progress, time=self._clock(), is_best_so_far=bool(is_best_so_far))
            if epoch is not None:
                training_state = {**training_state, "epoch": epoch}
            if self._background:
                # A consistent copy now; the optimizer may step as soon as we return.
                model_state = self._snapshot.take(model_state, ("model",))
                training_state = self._snapshot.take(training_state, ("training",))
                self._writer.submit(self._committer(progress, current, model_state, training_state))
            else:
                self._commit(progress, current, model_state, training_state)
        self._previous.append(current)
        return self._paths(progress)

    def _committer(self, progress, current, model_state, training_state) -> Callable[[], None]:
        def commit() -> None:
            try:
                self._commit(progress, current, model_state, training_state)
            except CheckpointSaveError as e:
                if self._on_save_error == "raise":
                    raise
                logger.error("%s", e)

        return commit

    def _commit(self, progress: Tuple[int, int], current: CheckpointInfo, model_state: Dict, training_state: Dict) -> None:
        """Writes, commits and applies retention (on the worker thread for background saves)."""
        try:
            self._check_free_space(progress)
            files = self._dir.write_states(progress, self._own_rank(), model_state, training_state, current.time)
            record = storage.record(
                progress, current.time, current.metrics, current.total_batches_completed, current.is_best_so_far
            )
            record.update(files=files, world_size=self._world_size, versions=dict(_versions()),
                          config_sha256=self._config_hash(), run_start=self._run_start)
            self._dir.write_record(progress, self._own_rank(), record)
        except OSError as e:
            self._save_failed(progress, e)
        self._last_size = files[storage.MODEL]["size"] + files[storage.TRAINING]["size"]
        self._verified.add((progress, self._last_size, current.time))
        if self._index is not None:
            found = storage.Found(progress, current.time, self._last_size, record)
            self._index[progress] = (found, _info(found))
        logger.debug("Saved checkpoint %s in %s", current.name, self._serialization_dir)
        if self._is_primary:
            self._apply_retention(current.time)

    def wait(self) -> None:
        """Waits for a background save in flight, and raises its error, if it failed."""
        self._writer.wait()
        self._writer.check()

    def _check_free_space(self, progress: Tuple[int, int]) -> None:
        if self._last_size is None:  # the first save of this process: estimate from the newest on disk
            complete = self._complete()  # the listing retention reuses (the index)
            self._last_size = complete[-1][0].size_bytes if complete else 0
        free = shutil.disk_usage(self._serialization_dir).free
        if self._last_size > free:
            raise OSError(
                errno.ENOSPC,
                f"not enough free space for checkpoint e{progress[0]}_b{progress[1]}: it needs about "
                f"{self._last_size} bytes (the size of the last one), got {free} bytes free",
            )

    def _save_failed(self, progress: Tuple[int, int], error: OSError) -> NoReturn:
        # The temp file was removed where the error struck; a state file already renamed into
        # place belongs to this incomplete checkpoint only, never to an earlier one.
        for kind in (storage.MODEL, storage.TRAINING, storage.RECORD):
            try:
                storage.remove_file(self._dir.path(kind, progress, self._own_rank()))
            except OSError:
                pass
        message = (
            f"{_WHERE}: could not save checkpoint e{progress[0]}_b{progress[1]} in "
            f"{self._serialization_dir}, got {type(error).__name__}: {error}. Earlier checkpoints "
            "are untouched. Free disk space (or lower what retention keeps, or add a disk_quota "
            "policy), check the directory is writable, or set on_save_error: \"warn\" to train on."
        )
        raise CheckpointSaveError(message) from error

    def _config_hash(self) -> Optional[str]:
        self._run_config()
        return self._config_sha256

    def _run_config(self) -> Optional[Dict[str, Any]]:
        """The run's config.json (AllenNLP writes it before training), read once."""
        if self._config is None:
            try:
                with open(os.path.join(self._serialization_dir, "config.json"), "rb") as f:
                    data = f.read()
                self._config, self._config_sha256 = json.loads(data), hashlib.sha256(data).hexdigest()
            except (OSError, ValueError):
                return None
        return self._config

    def _complete(self) -> List[Tuple[storage.Found, CheckpointInfo]]:
        """
        This rank's complete checkpoints, oldest first. The writer of an unsharded directory (it
        holds the lock: no one else writes there) lists the directory once and then keeps the
        index up to date itself, so a save costs no listing however long the history.
        """
        if self._index is not None:
            return [self._index[p] for p in sorted(self._index)]
        listing = self._dir.list(None if self._ranks() is None else [self._rank])
        entries = {f.progress: (f, _info(f)) for f in listing.complete}
        if self._may_write() and not self.state_is_sharded:
            self._index = entries
        return [entries[p] for p in sorted(entries)]

    def _judge(self, now: float) -> Tuple[List[CheckpointInfo], List[List[str]]]:
        """The checkpoints retention judges, oldest first, with the rules that keep each."""
        ranks = self._ranks()
        # Candidates are judged by this rank's own files (when sharded, other ranks may still be
        # writing the newest checkpoint); the newest checkpoint complete on every rank is kept too.
        checkpoints = [info for _, info in self._complete()]
        protected = {c.progress for c in checkpoints[-1:]}
        if ranks is not None:
            protected.update(f.progress for f in self._dir.list(ranks).complete[-1:])
        reasons = list(self._retention_policy.explain(checkpoints, now))
        if len(reasons) != len(checkpoints):
            raise ValueError(
                f"{type(self._retention_policy).__name__}.should_keep: must return one flag per "
                f"checkpoint, got {len(reasons)} flags for {len(checkpoints)} checkpoints. "
                "Return a list as long as its `checkpoints` argument."
            )
        for checkpoint, reason in zip(checkpoints, reasons):
            if checkpoint.progress in protected:
                reason.append("newest complete checkpoint (always kept)")
        return checkpoints, reasons

    def _apply_retention(self, now: float) -> None:
        for checkpoint, reasons in zip(*self._judge(now)):
            if not reasons:
                logger.info(
                    "Deleting checkpoint %s%s in %s: retention policy %s does not keep it",
                    self._dir.prefix,
                    checkpoint.name,
                    self._serialization_dir,
                    self._retention_policy.describe(),
                )
                self._dir.remove(checkpoint.progress, self._ranks())
                if self._index is not None:
                    self._index.pop(checkpoint.progress, None)

    def explain(self) -> List[Tuple[CheckpointInfo, List[str]]]:
        """
        A dry run of retention: each complete checkpoint on disk, oldest first, with the rules
        that keep it (an empty list: the next save deletes it). Deletes nothing.
        """
        self.wait()
        return list(zip(*self._judge(self._clock())))

    # ---- finding and loading -------------------------------------------------------------

    def find_latest_checkpoint(self) -> Optional[Tuple[str, str]]:
        """
        Paths `(model_state, training_state)` of the newest good checkpoint, or None when there is
        none at all. Checkpoints this process wrote are trusted without reading them again.
        """
        self.wait()
        if self._index:  # right after our own save: the newest is the one we wrote and checksummed
            found = self._index[max(self._index)][0]
            if (found.progress, found.size_bytes, found.time) in self._verified:
                return self._paths(found.progress)
        found, _ = self._newest_good(load=False)
        return None if found is None else self._paths(found.progress)

    def load_checkpoint(self) -> Optional[TrainerCheckpoint]:
        """
        Loads the newest good checkpoint (onto the CPU), or returns None when there is none.
        Walks the checkpoints newest first, checking sizes and checksums against their records
        (AllenNLP's pairs, which have none, by loading them); a bad one is moved into `corrupt/`
        with a WARNING, and the next older one is tried. Leftovers of a crash are removed.
        """
        self.wait()
        trainer = resume.find_trainer(self)
        if trainer is not None:
            self._resume.attach(trainer)  # also on fresh runs: it records each epoch's start
        found, states = self._newest_good(load=True)
        if found is None:
            return None
        logger.info("Restoring checkpoint %s from %s", _name(found.progress), self._serialization_dir)
        model_state, training_state = states
        self._compare_run(found, training_state.get(resume.KEY) or {})
        self._resume.resume(training_state, found.progress, self._rank, trainer)
        moving_average = getattr(trainer, "_moving_average", None)
        if moving_average is not None and "parameters" in training_state.get("moving_average", {}):
            # MovingAverage.load_state_dict would bind to the unpickled copies of the parameters,
            # and its shadows would stop following the model: bind it to the live ones.
            training_state["moving_average"] = {**training_state["moving_average"], "parameters": moving_average._parameters}
        # Cadence restarts from the restored point, at restart time: time spent dead does not count.
        self._previous = [CheckpointInfo(*found.progress, time=self._clock())]
        self._run_start = found.record.get("run_start", self._run_start)
        return TrainerCheckpoint(model_state, training_state)

    def _compare_run(self, found: storage.Found, saved: Dict[str, Any]) -> None:
        """Says what differs between the run that wrote the checkpoint and this one."""
        differences = []
        old, new = saved.get("config"), self._run_config()
        if old is not None and new is not None and old != new:
            flat_old, flat_new = _flatten(old), _flatten(new)
            keys = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
            differences.append("config keys " + ", ".join(
                f"{k} ({flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r})" for k in keys))
        if found.record.get("world_size", self._world_size) != self._world_size:
            differences.append(f"world size ({found.record['world_size']} -> {self._world_size})")
        running = _versions()
        for package, version in found.record.get("versions", {}).items():
            if running.get(package) != version:
                differences.append(f"{package} version ({version} -> {running.get(package)})")
        if differences:
            logger.warning(
                "Resuming from checkpoint %s, which a different setup wrote: %s. The run will not go "
                "on exactly as it would have.", _name(found.progress), "; ".join(differences),
            )

    def _newest_good(self, load: bool) -> Tuple[Optional[storage.Found], Optional[Tuple[Dict, Dict]]]:
        listing = self._dir.list(self._ranks(), self._own_rank())
        self._index = None  # listed afresh: rebuilt at the next save
        if self._may_write():
            self._clean_up(listing)
        rejected = []
        for found in reversed(listing.complete):
            try:
                return found, self._check(found, load)
            except storage.BadCheckpoint as e:
                rejected.append(f"{_name(found.progress)} ({e})")
                moved = self._may_write() and self._dir.quarantine(found.progress, self._ranks())
                logger.warning(
                    "Checkpoint %s in %s is not usable: %s. %s Falling back to an older checkpoint.",
                    _name(found.progress),
                    self._serialization_dir,
                    e,
                    f"Moved {', '.join(moved)} into corrupt/." if moved else "",
                )
        if rejected:
            raise RuntimeError(
                f"{_WHERE}: no usable checkpoint in {self._serialization_dir}, got "
                f"{len(rejected)} bad one(s): {'; '.join(rejected[:10])}"
                f"{f' and {len(rejected) - 10} more' if len(rejected) > 10 else ''}. Their files are in "
                f"{os.path.join(self._serialization_dir, 'corrupt')}; start a new run, or restore "
                "a good copy of one of them."
            )
        return None, None

    def _check(self, found: storage.Found, load: bool) -> Optional[Tuple[Dict, Dict]]:
        """Loads (or only verifies) one checkpoint's files; raises BadCheckpoint."""
        key = (found.progress, found.size_bytes, found.time)
        expected = found.record.get("files")
        if not load and key in self._verified:
            return None
        model_path, training_path = self._paths(found.progress)
        if not load and expected:
            storage.verify(model_path, expected[storage.MODEL])
            storage.verify(training_path, expected[storage.TRAINING])
            self._verified.add(key)
            return None
        try:
            with torch.serialization.safe_globals(self._safe_globals):
                states = (
                    storage.load(model_path, expected and expected[storage.MODEL]),
                    storage.load(training_path, expected and expected[storage.TRAINING]),
                )
        except storage.UnsafeCheckpoint as e:
            raise ConfigurationError(
                f"{_WHERE}: checkpoint {_name(found.progress)} in {self._serialization_dir} holds "
                f"types that are not allowed to load, got: {e} Nothing in it was run. If you trust "
                "this file, list those types in the checkpointer's `safe_globals`, e.g. "
                '["my_pkg.MyState"].'
            ) from e
        self._verified.add(key)
        return states

    def close(self) -> None:
        """Waits for a save in flight, then gives up this checkpointer's hold on the directory's
        writer lock (also released at process exit)."""
        self.wait()
        if self._lock is not None:
            unlock_directory(self._lock)
            self._lock = None
            self._read_only = True

    def _may_write(self) -> bool:
        return self._is_primary and not self._read_only

    def restart_at(self, progress: Tuple[int, int], run_start: Optional[float] = None) -> None:
        """
        Resumes the save cadence from `progress`, where the trainer restarts (another
        checkpointer's restored checkpoint, whose run started at `run_start`), removing what a
        crash left among this one's files.
        """
        if self._may_write():
            self._index = None
            self._clean_up(self._dir.list(self._ranks()))
        self._previous = [CheckpointInfo(*progress, time=self._clock())]
        if run_start is not None:
            self._run_start = run_start

    @property
    def run_start(self) -> float:
        """When this run first started (taken back from the checkpoint it resumed from)."""
        return self._run_start

    def _clean_up(self, listing: storage.Listing) -> None:
        for progress in listing.orphan_records:
            logger.info("Removing the record of %s, whose state files were deleted", _name(progress))
            self._dir.remove(progress, self._ranks())
        for path in listing.stale_temps:
            logger.info("Removing temp file %s left by an interrupted save", path)
            storage.remove_file(path)
        if not listing.complete:
            # Nothing complete: maybe the world size changed. Delete nothing we cannot replace.
            return
        for progress in listing.incomplete:
            if os.path.exists(self._dir.path(storage.RECORD, progress, self._own_rank())):
                # Committed once, so something else removed a state file: keep what is left.
                moved = self._dir.quarantine(progress, self._ranks())
                logger.warning(
                    "Checkpoint %s in %s lost a state file its record lists; moved %s into corrupt/",
                    _name(progress), self._serialization_dir, ", ".join(moved),
                )
                continue
            logger.warning(
                "Removing incomplete checkpoint %s in %s (an interrupted save or deletion)",
                _name(progress),
                self._serialization_dir,
            )
            self._dir.remove(progress, self._ranks())

    # ---- names ---------------------------------------------------------------------------

    def _ranks(self) -> Optional[range]:
        return range(self._world_size) if self.state_is_sharded else None

    def _own_rank(self) -> Optional[int]:
        return self._rank if self.state_is_sharded else None

    def _paths(self, progress: Tuple[int, int]) -> Tuple[str, str]:
        rank = self._own_rank()
        return self._dir.path(storage.MODEL, progress, rank), self._dir.path(storage.TRAINING, progress, rank)


class _MetricsListener(TrainerCallback):
    """
    Attached by the checkpointer to the trainer's callbacks: the trainer hands validation
    metrics to callbacks (`on_epoch`) right before its end-of-epoch save, and nowhere else.
    """

    def __init__(self) -> None:
        super().__init__(serialization_dir="")
        self.trainer: Optional[Trainer] = None
        self.metrics: Dict[str, float] = {}
        self.epochs_validated = -1  # epochs completed when `metrics` were measured

    on_training_end: Optional[Callable[[], None]] = None

    def on_end(self, trainer, metrics=None, epoch=None, is_primary: bool = True, **kwargs) -> None:
        if self.on_training_end is not None:
            self.on_training_end()  # a background save in flight finishes (or fails) within train()

    def attach(self, trainer: Trainer) -> "_MetricsListener":
        if self.trainer is not trainer:
            self.trainer = trainer
            callbacks = getattr(trainer, "_callbacks", None)
            if isinstance(callbacks, list) and self not in callbacks:
                callbacks.append(self)
        return self

    def on_epoch(self, trainer, metrics: Dict[str, Any], epoch: int, is_primary: bool = True, **kwargs) -> None:
        prefix = "validation_"
        validated = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
        if validated:
            self.metrics, self.epochs_validated = validated, epoch + 1


@contextlib.contextmanager
def _checkpoint_state(trainer: Trainer) -> Iterator[Optional[Tuple[Dict[str, Any], Dict[str, Any]]]]:
    """The trainer's state; AllenNLP 2.4's trainers return it as a context manager."""
    state = trainer.get_checkpoint_state()
    if hasattr(state, "__enter__"):
        with state as inner:
            yield inner
    else:
        yield state


def _progress(
    training_state: Dict[str, Any], current: Optional[CheckpointInfo], epoch: Optional[int]
) -> Tuple[int, int]:
    if "epochs_completed" in training_state:
        return training_state["epochs_completed"], training_state["batches_in_epoch_completed"]
    if current is not None:
        return current.progress
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        return epoch + 1, 0  # AllenNLP 2.4 numbered the epoch just finished from 0
    raise ValueError(
        f"save_checkpoint: cannot tell which point in training this is, got epoch={epoch!r} and a "
        "training state without `epochs_completed`. Pass the 0-based index of the finished epoch."
    )


def _link_or_copy(source: str, target: str) -> None:
    """Points `target` at `source`'s content atomically (a hard link where possible)."""
    tmp = f"{target}.tmp-{os.getpid()}"
    storage.remove_file(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
