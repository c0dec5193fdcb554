import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

import torch.distributed as dist
from allennlp.common.checks import ConfigurationError
from allennlp.common.util import is_distributed
from allennlp.training.callbacks import TrainerCallback
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer
from allennlp.training.trainer import Trainer, TrainerCheckpoint

from trainer_ckpt.core import distributed, preemption
from trainer_ckpt.faces.allennlp import trainer as resume
from trainer_ckpt.io import sharded
from trainer_ckpt.policies.registry import WHERE as _WHERE
from trainer_ckpt.policies.registry import flag
from trainer_ckpt.checkpoint_info import CheckpointInfo, label
from trainer_ckpt.core.engine import CheckpointSaveError, Engine, UnsafeCheckpointError  # noqa: F401 (re-exported)
from trainer_ckpt.faces.allennlp.flat_keys import UNSET, Count as _Count, Flag as _Flag, Seconds as _Seconds
from trainer_ckpt.faces.allennlp.flat_keys import retention_policy_from, save_policy_from
from trainer_ckpt.policies.retention import RetentionPolicy
from trainer_ckpt.policies.save import SavePolicy
from trainer_ckpt import stores
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable

logger = logging.getLogger("trainer_ckpt.checkpointer")  # its 0.1 name, which users may filter on


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
        url = str(serialization_dir)
        if "://" in url:  # it would become a local folder named "s3:", and nothing would be uploaded
            fix = (f"Give the path itself, {url[len('file://'):]!r}" if url.startswith("file://") else
                   "Train into a local directory (allennlp train -s runs/my_run) and give the checkpointer "
                   f'upload_to: "{url}" (with storage_options for the endpoint and credentials)')
            raise ConfigurationError(f"{_WHERE}: `serialization_dir` must be a local directory, got {url!r}. {fix}.")
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
        return loading.load(path)


def _flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@functools.lru_cache(maxsize=None)
def _versions() -> Dict[str, str]:
    import allennlp.version

    from trainer_ckpt.core.engine import versions as engine_versions

    return {**engine_versions(), "allennlp": allennlp.version.VERSION}


def _remote_store(store: stores.Pairs, url: Any, options: Any) -> Any:
    """`store`, or `store` mirrored to object storage at `url`."""
    if url is None:
        if options is not None:
            raise ConfigurationError(f"{_WHERE}: `storage_options` is for `upload_to`, got {options!r} without it. Add upload_to, or remove storage_options.")
        return store
    from trainer_ckpt.stores.mirrored import Mirrored, is_url

    if not is_url(url):
        raise ConfigurationError(f'{_WHERE}: `upload_to` must be an fsspec URL, got {url!r}. Write e.g. "s3://my-bucket/runs/my_run".')
    if options is not None and not isinstance(options, dict):
        raise ConfigurationError(f"{_WHERE}: `storage_options` must be a mapping, got {options!r}. Write e.g. {{\"anon\": false}}.")
    try:
        return Mirrored(store, url, options)
    except ImportError as e:
        raise ConfigurationError(f"{_WHERE}: `upload_to` {url!r} needs a package that is not installed, got {e}. "
                                 "pip install fsspec and the protocol's package (s3fs for s3://).") from e


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
        AllenNLP 2.10: save when this many seconds passed since the last save (in distributed runs, by rank 0's clock).
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
    upload_to : `str`, optional (default=`None`)
        An fsspec URL (`"s3://bucket/runs/my_run"`): every checkpoint is also uploaded there, each
        file whole and the record last; retention deletes there too; a run whose serialization
        directory holds no checkpoint (a new machine) resumes from the newest good one there.
        Needs `fsspec` and the protocol's package (`s3fs` for S3). See README, "Scaling out".
    storage_options : `Dict[str, Any]`, optional (default=`None`)
        Passed to fsspec for `upload_to`, e.g. `{"endpoint_url": "http://127.0.0.1:9000"}` (s3fs
        `client_kwargs`, credentials...).
    save_on_signals : `List[Union[str, int]]`, optional (default=`None`)
        Signals to save on, e.g. `["SIGTERM", "SIGUSR1"]` (what SLURM or a spot VM sends before
        it kills the job). The handler only records the signal; after the batch being trained,
        every rank saves a normal checkpoint there, waits until it is committed (and uploaded),
        and the process exits with status 128 + the signal's number, so the scheduler requeues
        the job and `--recover` goes on from that batch. A handler you installed first is still
        called; AllenNLP's own SIGTERM handler, which stops training, is replaced while training runs.
    exit_on_signal : `bool`, optional (default=`True`)
        `false`: after that save, training goes on.
    max_host_memory : `int`, optional (default=`None`)
        Bytes of host memory the snapshot buffers of `background` saves may take; a state whose
        snapshot would take more is saved on the training thread instead. `null`: no bound.
    clock : `Callable[[], float]`, optional (default=`time.time`)
        For tests and embedding only, not a config key: the clock policies see.
    """

    def __init__(
        self,
        serialization_dir: Union[str, os.PathLike],
        save_policy: Optional[SavePolicy] = None,
        retention_policy: Optional[RetentionPolicy] = None,
        save_completed_epochs: _Flag = UNSET,
        save_every_num_seconds: _Seconds = None,
        save_every_num_batches: _Count = None,
        keep_most_recent_by_count: _Count = UNSET,
        keep_most_recent_by_age: _Seconds = None,
        num_serialized_models_to_keep: _Count = UNSET,
        keep_serialized_model_every_num_seconds: _Seconds = None,
        model_save_interval: _Seconds = None,
        filename_prefix: str = "",
        on_save_error: str = "raise",
        safe_globals: Optional[List[str]] = None,
        read_only: bool = False,
        restore_rng: bool = True,
        background: bool = False,
        upload_to: Optional[str] = None,
        storage_options: Optional[Dict[str, Any]] = None,
        save_on_signals: Any = None,
        exit_on_signal: _Flag = True,
        max_host_memory: Any = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if not isinstance(filename_prefix, str) or not re.fullmatch(r"[A-Za-z0-9_\-]*", filename_prefix):
            raise ConfigurationError(
                f"{_WHERE}: `filename_prefix` must be letters, digits, '_' or '-', got "
                f"{filename_prefix!r}. Use e.g. \"best_\"."
            )
        # The store holds rank, world size and sharding, which the trainer sets after construction.
        self._store = stores.Pairs(str(serialization_dir), filename_prefix)
        super().__init__(serialization_dir)
        if on_save_error not in ("raise", "warn"):
            raise ConfigurationError(
                f'{_WHERE}: `on_save_error` must be "raise" or "warn", got {on_save_error!r}. '
                'Use "warn" to log a failed save and let training go on.'
            )
        if clock is not None and not callable(clock):
            raise ConfigurationError(
                f"{_WHERE}: `clock` must be a callable returning seconds, got {clock!r}. "
                "It is for code and tests only; remove it from the config."
            )
        self._clock: Callable[[], float] = clock or time.time
        signals = preemption.parse(_WHERE, "save_on_signals", save_on_signals, ConfigurationError)
        exit_on_signal = flag(_WHERE, "exit_on_signal", exit_on_signal)
        if max_host_memory is not None and (isinstance(max_host_memory, bool) or not isinstance(max_host_memory, int) or max_host_memory < 0):
            raise ConfigurationError(f"{_WHERE}: `max_host_memory` must be a number of bytes (an int >= 0) or null, got "
                                     f"{max_host_memory!r}. Write e.g. 8589934592 (8 GiB), or null for no bound.")
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
        self._engine = Engine(
            _remote_store(self._store, upload_to, storage_options),
            background=flag(_WHERE, "background", background),
            safe_globals=[_import_global(name) for name in safe_globals or []],
            read_only=read_only,
            primary=self._is_primary,
            on_save_error=on_save_error,
            clock=self._clock,
            where=_WHERE,
            trust_hint='list those types in the checkpointer\'s `safe_globals`, e.g. ["my_pkg.MyState"].',
            save_error_hint=', or set on_save_error: "warn" to train on',
            max_host_memory=max_host_memory,
        )
        self._prepared = False  # the background snapshot's buffers
        self._listener = _MetricsListener()
        self._listener.on_training_end = self._training_ended
        self._resume = resume.ResumeTracker(restore=flag(_WHERE, "restore_rng", restore_rng))
        self._config: Optional[Dict[str, Any]] = None
        self._config_sha256: Optional[str] = None
        # Where this run saved, oldest first; starts with the point it (re)started from.
        self._previous: List[CheckpointInfo] = [CheckpointInfo(0, 0, self._clock())]
        # When the run started: recorded with every checkpoint and taken back on resume, so time
        # windows count from the first start of the run, however often it is restarted.
        self._run_start = self._previous[0].time
        self._preemption = _Listener(signals, exit_on_signal)  # last: nothing after it may fail with handlers installed

    # Set by the trainer (and AllenNLP's tests) after construction; they live in the store.
    @property  # type: ignore[override]
    def state_is_sharded(self) -> bool:
        return self._store.sharded

    @state_is_sharded.setter
    def state_is_sharded(self, value: bool) -> None:
        self._store.sharded = value

    @property
    def _rank(self) -> int:
        return self._store.rank

    @_rank.setter
    def _rank(self, rank: int) -> None:
        self._store.rank = rank
        if hasattr(self, "_engine"):
            self._engine.primary = rank == 0

    @property
    def _world_size(self) -> int:
        return self._store.world_size

    @_world_size.setter
    def _world_size(self, world_size: int) -> None:
        self._store.world_size = world_size

    # ---- saving --------------------------------------------------------------------------

    def maybe_save_checkpoint(
        self, trainer: Trainer, num_epochs_completed: int, num_batches_in_epoch_completed: int
    ) -> bool:
        """
        Called by the trainer after every batch and epoch; saves when the save policy says so, or
        when one of `save_on_signals` came (then exits, see `_stop`).
        """
        signum = self._preemption.requested()  # a collective in distributed runs: every rank, every call
        saved = self._save_point(trainer, num_epochs_completed, num_batches_in_epoch_completed, now=signum is not None)
        if signum is not None:
            _stop(self._preemption, signum, num_batches_in_epoch_completed == 0, self.drain, self._resume)
        return saved

    def _save_point(self, trainer: Trainer, epochs: int, batches: int, now: bool = False) -> bool:
        """Saves at this point if the save policy says so, or if `now` (once either way)."""
        self._engine.check()  # a background save that failed since the last call
        current = self._moment(trainer, epochs, batches)
        if not (now or distributed.should_save(self._save_policy, current, self._previous)):
            if not self._prepared:
                self._prepare(trainer)
            return False
        return self._save(trainer, current) is not None

    def _prepare(self, trainer: Trainer) -> None:
        """The first call that does not save: the snapshot buffers are allocated off the training thread."""
        self._prepared = True
        if not self._engine.uses_snapshots:
            return
        with _checkpoint_state(trainer) as state:
            if state is not None:
                self._engine.prepare({stores.MODEL: state[0], stores.TRAINING: state[1]})

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
        paths = self._save(arguments["trainer"], None, arguments.get("epoch"), arguments.get("is_best_so_far"))
        if arguments.get("is_best_so_far") and paths:
            self.wait()  # a background save: its files first
            _link_or_copy(paths[stores.MODEL], os.path.join(self._serialization_dir, "best.th"))

    def _save(
        self,
        trainer: Trainer,
        current: Optional[CheckpointInfo],
        epoch: Optional[int] = None,
        is_best_so_far: bool = False,
    ) -> Optional[Dict[str, str]]:
        """The saved files' paths; `{}` when another rank writes; None when nothing was saved."""
        self._engine.require_writable()
        self._engine.wait()  # at most one save in flight
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
                return {}
            model_state, training_state = state
            self._use_dcp(model_state)
            resume_state["config"] = self._run_config()
            training_state = {**training_state, resume.KEY: resume_state}
            if current is None:
                current = CheckpointInfo(*progress, time=self._clock(), is_best_so_far=bool(is_best_so_far))
            if epoch is not None:
                training_state = {**training_state, "epoch": epoch}
            paths = self._engine.save(
                progress,
                {stores.MODEL: model_state, stores.TRAINING: training_state},
                dataclasses.replace(current, run_start=self._run_start),
                record={"world_size": self._world_size, "versions": dict(_versions()), "config_sha256": self._config_hash()},
                retention=(self._retention_policy, lambda entry: True),
            )
        if paths is not None:
            self._previous.append(current)
        return paths

    def wait(self) -> None:
        """Waits for a background save in flight, and raises its error, if it failed."""
        self._engine.wait()

    def drain(self) -> None:
        """Waits for a save in flight and for its upload (with `upload_to`), and raises their errors."""
        self._engine.drain()

    def _training_ended(self) -> None:
        """
        At the end of the trainer's `train()`: a background save in flight finishes (or fails)
        within it, and signals are no longer listened to. When training ended right after a save
        for a signal (at the last epoch's end), that save is uploaded too and the run ends normally.
        """
        pending, self._resume.before_epoch = self._resume.before_epoch, None
        if pending is not None:
            self.drain()
            logger.warning("%s: training ended at the checkpoint saved for the signal; not exiting early", _WHERE)
        self.wait()
        self._preemption.close()

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

    @property
    def retention_policy(self) -> RetentionPolicy:
        """What this checkpointer keeps (its `retention_policy`, or the one its flat keys make)."""
        return self._retention_policy

    def explain(self) -> List[Tuple[CheckpointInfo, List[str]]]:
        """
        A dry run of retention: each complete checkpoint on disk, oldest first, with the rules
        that keep it (an empty list: the next save deletes it). Deletes nothing.
        """
        self.wait()
        entries, reasons = self._engine.judge(self._retention_policy, lambda entry: True, self._clock())
        return [(entry.info, reason) for entry, reason in zip(entries, reasons)]

    # ---- finding and loading -------------------------------------------------------------

    def find_latest_checkpoint(self) -> Optional[Tuple[str, str]]:
        """
        Paths `(model_state, training_state)` of the newest good checkpoint, or None when there is
        none at all. Checkpoints this process wrote are trusted without reading them again.
        """
        self.wait()
        entry = self._engine.newest_trusted()  # right after our own save: the one we checksummed
        if entry is None:
            found = self._engine.newest_good(load=False)
            entry = found and found[0]
        return None if entry is None else (entry.paths[stores.MODEL], entry.paths[stores.TRAINING])

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
        model = getattr(trainer, "model", None)
        templates = None
        if isinstance(model, torch.nn.Module) and self._use_dcp(model.state_dict()):
            optimizer = getattr(trainer, "optimizer", None)
            templates = {stores.MODEL: model.state_dict(),
                         stores.TRAINING: {} if optimizer is None else {"optimizer": sharded.template(optimizer)}}
        try:
            found = self._engine.newest_good(load=True, templates=templates)
        except UnsafeCheckpointError as e:
            raise ConfigurationError(str(e)) from e
        if found is None:
            return None
        entry, states = found
        logger.info("Restoring checkpoint %s from %s", label(entry.key), self._serialization_dir)
        model_state, training_state = states[stores.MODEL], states[stores.TRAINING]
        self._compare_run(entry, training_state.get(resume.KEY) or {})
        self._resume.resume(training_state, entry.key, self._rank, trainer)
        moving_average = getattr(trainer, "_moving_average", None)
        if moving_average is not None and "parameters" in training_state.get("moving_average", {}):
            # MovingAverage.load_state_dict would bind to the unpickled copies of the parameters,
            # and its shadows would stop following the model: bind it to the live ones.
            training_state["moving_average"] = {**training_state["moving_average"], "parameters": moving_average._parameters}
        # Cadence restarts from the restored point, at restart time: time spent dead does not count.
        self._previous = [CheckpointInfo(*entry.key, time=self._clock())]
        self._run_start = entry.record.get("run_start", self._run_start)
        return TrainerCheckpoint(model_state, training_state)

    def _use_dcp(self, model_state: Dict[str, Any]) -> bool:
        """
        Whether the model's state is sharded into DTensors (FSDP2): then every rank writes its
        shards into one checkpoint through DCP, instead of AllenNLP's `_w{rank}` files.
        """
        if distributed.world_size() == 1 or not sharded.is_sharded(model_state):
            return False
        self._store.sharded = False  # one set of names, written by every rank together
        return True

    def _compare_run(self, entry: stores.Entry, saved: Dict[str, Any]) -> None:
        """Says what differs between the run that wrote the checkpoint and this one."""
        differences = []
        old, new = saved.get("config"), self._run_config()
        if old is not None and new is not None and old != new:
            flat_old, flat_new = _flatten(old), _flatten(new)
            keys = sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))
            differences.append("config keys " + ", ".join(
                f"{k} ({flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r})" for k in keys))
        if entry.record.get("world_size", self._world_size) != self._world_size:
            differences.append(f"world size ({entry.record['world_size']} -> {self._world_size})")
        running = _versions()
        for package, version in entry.record.get("versions", {}).items():
            if package in running and running[package] != version:
                differences.append(f"{package} version ({version} -> {running.get(package)})")
        if differences:
            logger.warning(
                "Resuming from checkpoint %s, which a different setup wrote: %s. The run will not go "
                "on exactly as it would have.", label(entry.key), "; ".join(differences),
            )

    def close(self) -> None:
        """Stops listening to `save_on_signals`, waits for a save in flight, then gives up this
        checkpointer's hold on the directory's writer lock (also released at process exit)."""
        self._preemption.close()
        self._engine.close()

    def restart_at(self, progress: Tuple[int, int], run_start: Optional[float] = None) -> None:
        """
        Resumes the save cadence from `progress`, where the trainer restarts (another
        checkpointer's restored checkpoint, whose run started at `run_start`), removing what a
        crash left among this one's files.
        """
        self._engine.clean_up()
        self._previous = [CheckpointInfo(*progress, time=self._clock())]
        if run_start is not None:
            self._run_start = run_start

    @property
    def run_start(self) -> float:
        """When this run first started (taken back from the checkpoint it resumed from)."""
        return self._run_start


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


class _Listener(preemption.Preemption):
    """
    Listens to `save_on_signals`. The `allennlp` command installs a SIGTERM handler that stops
    training at once (it raises SigTermReceived): saving on SIGTERM replaces it, as it replaces the
    default action, so it is set aside rather than chained to, and put back when listening stops.
    """

    def __init__(self, signals: Tuple[int, ...], exit: bool) -> None:
        from allennlp.common.util import _handle_sigterm

        self._aside = signal.SIGTERM in signals and _main_thread() and signal.getsignal(signal.SIGTERM) is _handle_sigterm
        if self._aside:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            super().__init__(signals, exit=exit, where=_WHERE)
        except ValueError as e:  # not the main thread
            raise ConfigurationError(str(e)) from e

    def close(self) -> None:
        super().close()
        if self._aside and _main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            from allennlp.common.util import install_sigterm_handler

            install_sigterm_handler()
        self._aside = False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop(listener: preemption.Preemption, signum: int, epoch_end: bool, drain: Callable[[], None],
          tracker: Optional[resume.ResumeTracker]) -> None:
    """
    After the save for `signum`: waits until it is committed (and uploaded), then exits with 128 +
    `signum` (`listener.finish`). At an epoch end the trainer still links best.th and checks
    patience after the save, so the exit waits until the next epoch asks for its first batch;
    when training ends there instead, it ends normally.
    """
    if epoch_end and listener.exit and tracker is not None and tracker.trainer is not None:
        tracker.before_epoch = lambda: listener.finish(signum, drain)
    else:
        listener.finish(signum, drain)


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
    """
    Points `target` at `source`'s content atomically (a hard link where possible, else a copy),
    through a hidden temp file that is fsynced, renamed, and removed if anything fails (a crash
    leaves it to the next run's clean-up, which knows its name).
    """
    tmp = durable.temp_path(target)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(source, tmp)
        durable.commit([(tmp, target)])  # fsyncs it, renames it over `target`, fsyncs the directory
    except BaseException:
        durable.remove_file(tmp)
        raise
