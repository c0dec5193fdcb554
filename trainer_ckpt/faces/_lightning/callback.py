"""
The Lightning face: `ModelCheckpoint`, a subclass of Lightning's that writes every checkpoint the
callback makes through the engine, and resumes `fit(ckpt_path="last")` from the newest one that
verifies. Lightning's internals it relies on, all here:

- `_save_checkpoint(trainer, filepath)`, the one funnel of the callback's writes: ours dumps the
  checkpoint on every rank (`trainer._checkpoint_connector.dump_checkpoint`, collective under
  some strategies), writes it on rank 0 through the engine, then keeps Lightning's bookkeeping
  (`_last_global_step_saved`, `_last_checkpoint_saved`, the loggers' `after_save_checkpoint`).
- `_remove_checkpoint(trainer, filepath)`: the record first, then the files (the engine's store).
- `_find_last_checkpoints(trainer)`: what `fit(ckpt_path="last")` picks from (the newest by
  mtime, before the callbacks' `setup`): ours answers with the newest checkpoint that verifies,
  moving bad ones into `corrupt/` with a WARNING. The directory is resolved as Lightning does,
  with its private `__resolve_ckpt_dir` (`dirpath` is not set yet at that point).
- `save_on_signals`: the check sits in `on_train_batch_end`, after the periodic save (every rank
  calls it, every step); the signal handlers are ours from `on_train_start` to `on_train_end` (or
  `on_exception`), on top of Lightning's (installed just before `on_train_start`), to which they
  chain. A SIGTERM also sets Lightning's own flag: when Lightning stops the run for it before our
  check (`SIGTERMException`, e.g. a SIGTERM during validation), `on_exception` saves and the exit
  status becomes 128 + 15 (Lightning's exception, whose status is none, exits with 0).
- `ModelParallelStrategy` (FSDP2, DTensors) with `save_distributed_checkpoint=True` (its default):
  every rank calls the engine, which writes the sharded state with DCP (a directory of every rank's
  part, committed by the primary; `background=True` copies the local shards and writes off the
  training thread). Lightning reads such a checkpoint with its strategy's `load_checkpoint`, which
  wants its own layout (a `meta.pt` beside the parts): from `setup` to `teardown` the callback
  wraps that method of the strategy instance, and loads the checkpoints of ours itself.
- The fit loop, from `setup` to `teardown`: its `_load_combined_loader_states` wrapped (a
  torchdata `StatefulDataLoader` is prepared there, before its first iterator), and its validation
  loop's `run` and `increment_progress_to_evaluation_end` (each leaves the random state as it found
  it); its `_data_fetcher`, made again at an epoch's start on resume; its `reset_restart_stage`,
  resuming from a checkpoint saved after an epoch's last batch (see `on_train_start`).
Other strategies that write sharded state themselves (FSDP1's sharded mode, DeepSpeed) keep
Lightning's own save. Files under another directory than `dirpath` (a `filename` with a folder in it) too.
"""
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Set
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint as _ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from trainer_ckpt.faces.arguments import require_bools, require_policy
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core import loaders, preemption
from trainer_ckpt.core.engine import Engine, UnusableCheckpoint
from trainer_ckpt.core.background import require_host_memory
from trainer_ckpt.core.rng import capture_rng, restore_rng
from trainer_ckpt.io import loading, sharded
from trainer_ckpt.stores import RNG, NamedFiles, named

if TYPE_CHECKING:
    from trainer_ckpt.policies.retention import RetentionPolicy

__all__ = ["ModelCheckpoint", "LAYOUT"]

logger = logging.getLogger("trainer_ckpt.lightning")
LAYOUT = named.one_file((".ckpt",))  # epoch=3-step=120.ckpt, last.ckpt, last-v1.ckpt
MAIN = named.MAIN
_WHERE = "trainer_ckpt.lightning.ModelCheckpoint"


class ModelCheckpoint(_ModelCheckpoint):
    """
    Lightning's `ModelCheckpoint` (the same constructor, file names, files kept, `best_model_path`,
    `best_k_models`, `last_model_path`, `state_dict`), with every file written durably (temp
    file, fsync, rename) and a hidden record (`.{file}.json`: size, CRC32, step, metrics) and random
    state (`.{file}.rng`) beside it; `fit(ckpt_path="last")` resumes from the newest checkpoint that
    verifies, past a truncated or altered one (moved into `corrupt/` with a WARNING). Plus, as keywords:

    background : `bool` (default `False`)
        A save copies the state into reused CPU buffers and returns; a worker thread writes it. The
        checkpoint it replaces is removed once it is committed; the next save, `teardown` and an
        exception in `fit` wait for it (a failed write is raised there).
    max_host_memory : `int` (default `None`)
        Bytes the background save's snapshot buffers may take; a checkpoint larger than that is
        written on the training thread instead. None: no bound.
    save_on_signals : `Sequence[str | int]` (default `None`)
        Signals (`["SIGTERM", "SIGUSR1"]`, or numbers) on which to save: the handler only notes the
        signal; at the end of the step it came in, every rank agreeing, the callback saves as its
        periodic saves do (its top-k file and `last`, retention as usual; a file named as its
        top-k ones when neither would be written), waits until that is committed, then exits with
        status 128 + the signal's number. Handlers installed before (yours, Lightning's) are still called.
    exit_on_signal : `bool` (default `True`)
        False: training goes on after that save (Lightning itself still stops the run on a SIGTERM).
    retention_policy : `RetentionPolicy` (default `None`)
        Which of this callback's top-k files to keep, instead of `save_top_k` (give one, not both:
        `save_top_k` becomes -1 and the policy decides); `last` files and other callbacks' files
        are never judged, nor the newest deleted.
    safe_globals : `Sequence[type]` (default `()`)
        Your own types that may be unpickled from checkpoints you trust, when verifying one without a record.
    """

    def __init__(self, *args: Any, background: bool = False, retention_policy: Optional["RetentionPolicy"] = None,
                 safe_globals: Any = (), save_on_signals: Optional[Sequence[Any]] = None, exit_on_signal: bool = True,
                 max_host_memory: Optional[int] = None, **kwargs: Any) -> None:
        require_bools(_WHERE, background=background, exit_on_signal=exit_on_signal)
        require_policy(_WHERE, "retention_policy", retention_policy, "RetentionPolicy")
        self.signals = preemption.parse(_WHERE, "save_on_signals", save_on_signals)
        require_host_memory(_WHERE, max_host_memory)
        if retention_policy is not None:
            top_k = args[5] if len(args) > 5 else kwargs.get("save_top_k", -1)
            if top_k != -1:
                raise ValueError(f"{_WHERE}: give at most one of `save_top_k` and `retention_policy`, got save_top_k={top_k!r} "
                                 f"and {retention_policy!r}. Express the whole rule in the retention policy.")
            if len(args) <= 5:
                kwargs["save_top_k"] = -1
        super().__init__(*args, **kwargs)
        self.background, self.retention_policy, self.safe_globals = background, retention_policy, list(safe_globals)
        self.exit_on_signal, self.max_host_memory = exit_on_signal, max_host_memory
        self._engines: Dict[str, Engine] = {}
        self._preemption: Optional[preemption.Preemption] = None  # listening from on_train_start to on_train_end
        self._pending: Optional[_Pending] = None  # the last save submitted, and the removals that wait for its commit
        self._rng_before_validation: Optional[Dict[str, Any]] = None  # while a validation within fit runs

    def _engine(self, trainer: Any, directory: str) -> Engine:
        directory = os.path.abspath(directory)
        engine = self._engines.get(directory)
        if engine is None:
            engine = self._engines[directory] = Engine(
                _Store(directory, self._layout()), background=self.background, safe_globals=self.safe_globals,
                primary=trainer.is_global_zero, max_host_memory=self.max_host_memory,
                where=_WHERE, trust_hint="pass those types in `safe_globals`.",
            )
            if engine.may_write:
                engine.clean_up()
        return engine

    def _layout(self) -> Any:
        """The callback's files: `*{FILE_EXTENSION}` (a subclass or an instance may change it from `.ckpt`)."""
        return LAYOUT if self.FILE_EXTENSION == ".ckpt" else named.one_file((self.FILE_EXTENSION,))

    def _ours(self, trainer: Any, filepath: str) -> bool:
        """Whether the engine writes `filepath`: a file right in `dirpath`, under a strategy that saves through its CheckpointIO."""
        strategy = trainer.strategy
        plain = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and "DeepSpeed" not in type(strategy).__name__
        return (plain or _dcp_strategy(strategy)) and self.dirpath is not None and "://" not in str(filepath) and \
            os.path.dirname(os.path.abspath(filepath)) == os.path.abspath(self.dirpath)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        if not self._ours(trainer, filepath):
            return super()._save_checkpoint(trainer, filepath)
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)  # every rank
        if trainer.is_global_zero or sharded.is_sharded(checkpoint):  # sharded: every rank writes its part
            engine = self._engine(trainer, self.dirpath)
            self._forget_removed(engine.store)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if getattr(v, "numel", lambda: 1)() == 1}
            info = CheckpointInfo(trainer.current_epoch, 0, time=time.time(), metrics=metrics,
                                  total_batches_completed=trainer.global_step)
            retention = None
            if self.retention_policy is not None:
                key, last = self.state_key, self.CHECKPOINT_NAME_LAST
                retention = (self.retention_policy,
                             lambda e: e.record.get("callback") == key and not re.match(rf"^{re.escape(last)}(-v\d+)?\.", e.name))
            pending = self._pending = _Pending(engine.store)
            engine.save(os.path.basename(filepath), {MAIN: checkpoint, RNG: self._training_rng()}, info,
                        record={"callback": self.state_key, "epoch": trainer.current_epoch, "global_step": trainer.global_step},
                        after_commit=pending.commit, retention=retention)
        trainer.strategy.barrier("trainer_ckpt.lightning.ModelCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for lightning_logger in trainer.loggers:
                lightning_logger.after_save_checkpoint(proxy(self))

    def _remove_checkpoint(self, trainer: Any, filepath: str) -> None:
        if not self._ours(trainer, filepath) or os.path.islink(filepath):
            return super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            store = self._engine(trainer, self.dirpath).store
            if self._pending is None or not self._pending.defer(os.path.basename(filepath)):
                store.remove(os.path.basename(filepath))

    def _forget_removed(self, store: "_Store") -> None:
        """Drops from Lightning's top-k what our retention deleted (on the worker thread, in the background)."""
        gone = {os.path.join(os.path.abspath(self.dirpath), name) for name in store.take_removed()}
        if not gone:
            return
        self.best_k_models = {p: s for p, s in self.best_k_models.items() if os.path.abspath(p) not in gone}
        if os.path.abspath(self.best_model_path) in gone:
            best = (max if self.mode == "max" else min)(self.best_k_models, key=self.best_k_models.get, default="")
            self.best_model_path, self.best_model_score = best, self.best_k_models.get(best)

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed."""
        for engine in self._engines.values():
            engine.wait()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """`fit` raised (Lightning calls no `teardown` then): its own exception save, the save for a
        signal Lightning stopped the run for, then every save in flight committed before the
        exception goes on (a failed one is logged, not raised over it), and the engines closed."""
        super().on_exception(trainer, pl_module, exception)
        try:
            if isinstance(exception, SIGTERMException):
                self._save_for_lightnings_stop(trainer, exception)
            self.wait()
        except Exception as e:
            logger.error("%s: a save failed while fit raised %s: %s", _WHERE, type(exception).__name__, e)
        finally:  # and the directory's lock goes, as at teardown: the process may live on (a notebook)
            self._stop_listening()
            vars(trainer.strategy).pop("load_checkpoint", None)
            self._unwrap_loops(trainer)
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()

    # ---- save_on_signals -------------------------------------------------------------------

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Lightning's periodic save, then the step boundary of `save_on_signals` (every rank, every step)."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        signum = self._preemption.requested() if self._preemption is not None else None
        if signum is not None:
            self._save_for_signal(trainer)
            self._preemption.finish(signum, self._drain)  # exits with 128 + signum, unless exit_on_signal=False

    def _save_for_lightnings_stop(self, trainer: Any, exception: SIGTERMException) -> None:
        """
        Lightning stopped the run for a SIGTERM that came after this step's check (in validation,
        at an epoch's end): the save is made here, and Lightning's exception, which it raises on
        after its own teardown, gets our exit status instead of none (0).
        """
        signum = self._preemption.requested() if self._preemption is not None else None
        if signum is None:
            return
        self._save_for_signal(trainer)
        try:
            self._preemption.finish(signum, self._drain)
        except SystemExit as stop:
            exception.code = stop.code

    def _save_for_signal(self, trainer: Any) -> None:
        """A checkpoint at this step, as the periodic saves write one (none when one was saved at this very step)."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None or self.monitor in candidates:
            self._save_topk_checkpoint(trainer, candidates)
        if self._last_global_step_saved != trainer.global_step and self.save_last is not True:
            # not among the top k (or save_top_k=0), and no `last` file of its own: Lightning's save_on_exception file
            self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))
        self._save_last_checkpoint(trainer, candidates)

    def _drain(self) -> None:
        """Waits until the saves are committed (and uploaded)."""
        for engine in self._engines.values():
            engine.drain()

    def _stop_listening(self) -> None:
        if self._preemption is not None:
            self._preemption.close()
            self._preemption = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Lightning's `last` save, then the signal handlers go (before Lightning's own teardown puts back what it replaced)."""
        super().on_train_end(trainer, pl_module)
        self._stop_listening()

    def _find_last_checkpoints(self, trainer: Any) -> Set[str]:
        """The newest checkpoint in the callback's directory that verifies (of any name: a `last` one
        or a top-k one), for `fit(ckpt_path="last")`; bad ones go into `corrupt/`. Lightning's
        answer (its `last*.ckpt` files) for a directory elsewhere than the local disk."""
        directory = str(self._ModelCheckpoint__resolve_ckpt_dir(trainer))  # type: ignore[attr-defined]
        if "://" in directory or not os.path.isdir(directory):
            return super()._find_last_checkpoints(trainer)
        engine = self._engine(trainer, directory)
        try:
            found = engine.newest_good(load=False)
        except UnusableCheckpoint as e:
            logger.warning("%s", e)
            return set()
        return set() if found is None else {os.path.normpath(found[0].paths[MAIN])}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._rng_to_restore = self._saved_rng(trainer.ckpt_path)
        self._stale_iterator = False  # see on_train_start

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """
        Resuming from a checkpoint of ours saved at an epoch's end: every generator back as it was
        at that save (Lightning restores none), where the uninterrupted run went on from it: the
        start of the next epoch, before the epoch's data iterator draws its seed and its shuffle.
        Lightning made the first epoch's iterator earlier, while setting up (after drawing whatever
        building the data took): it is made again here, as the uninterrupted run makes it; also
        for a checkpoint without our random state saved after an epoch's last batch (see `on_train_start`).
        """
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        stale, self._stale_iterator = getattr(self, "_stale_iterator", False), False
        if rng is not None:
            restore_rng(rng)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)  # Lightning's, private
        if fetcher is not None and (rng is not None or stale):
            iter(fetcher)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """
        Listens for `save_on_signals`. Resuming within an epoch (Lightning calls no
        `on_train_epoch_start` then): the generators back before the first batch; the data order
        is Lightning's (see the face's guide). Resuming from a checkpoint saved after an epoch's
        last batch, Lightning marks that epoch done, but would go on with the next one as within
        an epoch: without `on_train_epoch_start` or the next epoch's progress (a later checkpoint
        in it would resume as at its start), and on the iterator it made while setting up (a
        stateful loader's, put back at the epoch's end, yields nothing: the epoch is skipped). It
        is told the epoch is over instead, so that the next one starts as in the uninterrupted
        run; `on_train_epoch_start` puts the generators back and makes its iterator.
        """
        self._stop_listening()
        self._preemption = preemption.Preemption(self.signals, exit=self.exit_on_signal, where=_WHERE)
        loop = trainer.fit_loop
        if not loop.restarted_mid_epoch:
            return
        if loop.epoch_loop.restarted_on_train_batch_end and loop.epoch_loop.batch_progress.is_last_batch:
            loop.reset_restart_stage()  # what Lightning does after each epoch
            self._stale_iterator = True
            return
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng is not None:
            restore_rng(rng)

    def _saved_rng(self, path: Any) -> Any:
        """The random state saved with checkpoint `path`, when it is one of ours that has it; else None."""
        if not path or "://" in str(path):
            return None
        directory, name = os.path.split(os.path.abspath(str(path)))
        entry = NamedFiles(directory, self._layout()).entry(name)
        if RNG not in entry.paths:
            return None  # Lightning's file, or ours without its random state
        try:
            return loading.read({RNG: entry.paths[RNG]}, entry.record.get("files", {}))[RNG]
        except loading.BadCheckpoint as e:
            logger.warning("Resuming from %s without its random state (the run goes on, not bit-exact): %s", path, e)
            return None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        # an engine holds the directory's lock, a Preemption the process's signal handlers: not carried into a copy
        state["_engines"], state["_pending"], state["_preemption"] = {}, None, None
        return state

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Training loaders that are torchdata's `StatefulDataLoader` get `loaders.prepare` (see
        `_prepare_loaders`); validation within `fit` leaves the random state as it found it (see
        `_isolate_validation`). Under `ModelParallelStrategy`, the strategy's `load_checkpoint` reads
        our sharded checkpoints too."""
        super().setup(trainer, pl_module, stage)
        self._prepare_loaders(trainer.fit_loop)
        self._isolate_validation(trainer.fit_loop.epoch_loop.val_loop)
        strategy = trainer.strategy
        if not _dcp_strategy(strategy) or "load_checkpoint" in vars(strategy):
            return
        lightnings = strategy.load_checkpoint

        def load_checkpoint(checkpoint_path: Any, weights_only: Optional[bool] = None) -> Dict[str, Any]:
            if self._sharded_of_ours(checkpoint_path):
                return self._load_sharded(trainer, checkpoint_path)
            return lightnings(checkpoint_path, weights_only=weights_only)

        strategy.load_checkpoint = load_checkpoint

    @staticmethod
    def _prepare_loaders(loop: Any) -> None:
        """
        Each `StatefulDataLoader` among the fit loop's training loaders carries its workers' random
        state in its own state (`loaders.prepare`), which Lightning saves and loads with the loop.
        It must be done after Lightning asks for the loaders and before it makes their iterator
        (which starts the workers), with no hook in between: the loop's `_load_combined_loader_states`
        (private, called at that very point of its `setup_data`, for every new loader) is wrapped on
        the loop instance until `teardown`. Lightning makes the iterator right after loading the
        saved position, before `on_train_start` puts the random state back: the order
        `loaders.restore` asks for.
        """
        if "_load_combined_loader_states" in vars(loop):
            return
        lightnings = loop._load_combined_loader_states

        def load_combined_loader_states() -> None:
            for loader in loop._combined_loader.flattened if loop._combined_loader is not None else ():
                if loaders.is_stateful(loader):
                    loaders.prepare(loader)
            lightnings()

        loop._load_combined_loader_states = load_combined_loader_states

    def _isolate_validation(self, val_loop: Any) -> None:
        """
        A validation within `fit` (at an epoch's end, or every `val_check_interval` batches) puts
        the random state back as it found it when it ends: its loader's iterator and whatever it
        runs draw from it. A run resumed from a checkpoint saved before a validation then goes on
        as the uninterrupted run did, whether Lightning runs that validation again or only makes
        its iterator to skip it (after an epoch's last batch); a checkpoint saved during one
        (`on_validation_end`) holds the state training goes on from. The fit loop's validation
        loop's `run` and `increment_progress_to_evaluation_end` are wrapped on the instance until
        `teardown` (by each of several callbacks: each keeps the state its own saves take).
        """
        for name in ("run", "increment_progress_to_evaluation_end"):
            setattr(val_loop, name, self._isolated(getattr(val_loop, name)))

    def _isolated(self, method: Any) -> Any:
        def isolated(*args: Any, **kwargs: Any) -> Any:
            before = self._rng_before_validation = capture_rng()
            try:
                return method(*args, **kwargs)
            finally:
                restore_rng(before)
                self._rng_before_validation = None

        return isolated

    @staticmethod
    def _unwrap_loops(trainer: Any) -> None:
        """Lightning's own methods on its loops again (see `_prepare_loaders`, `_isolate_validation`)."""
        vars(trainer.fit_loop).pop("_load_combined_loader_states", None)
        for name in ("run", "increment_progress_to_evaluation_end"):
            vars(trainer.fit_loop.epoch_loop.val_loop).pop(name, None)

    def _training_rng(self) -> Dict[str, Any]:
        """The random state training goes on from: during a validation, the one it started with."""
        return self._rng_before_validation if self._rng_before_validation is not None else capture_rng()

    def _sharded_of_ours(self, path: Any) -> bool:
        """Whether `path` is a sharded checkpoint of ours: a directory with a record beside it, without Lightning's `meta.pt`."""
        if not path or "://" in str(path) or not os.path.isdir(path) or os.path.exists(os.path.join(path, "meta.pt")):
            return False
        directory, name = os.path.split(os.path.abspath(str(path)))
        return bool(NamedFiles(directory, self._layout()).entry(name).record)

    def _load_sharded(self, trainer: Any, path: Any) -> Dict[str, Any]:
        """
        Every rank: verifies checkpoint `path` and loads its shards into the model and optimizers
        (set up and sharded by then), as Lightning's strategy does with its own layout; returns the
        rest of the checkpoint (loops, callbacks, schedulers) for Lightning to restore.
        """
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
        )

        model = trainer.strategy.model
        optimizers = [getattr(o, "_optimizer", o) for o in trainer.strategy.optimizers]
        template = {"state_dict": get_model_state_dict(model),
                    "optimizer_states": [get_optimizer_state_dict(model, o) for o in optimizers]}  # Adam's state made
        directory, name = os.path.split(os.path.abspath(str(path)))
        # A checkpoint in another directory (another run's) is only read: no lock, no clean-up there.
        own = directory in self._engines or self.dirpath is not None and directory == os.path.abspath(self.dirpath)
        engine = self._engine(trainer, directory) if own else Engine(
            NamedFiles(directory, self._layout()), read_only=True, safe_globals=self.safe_globals,
            primary=trainer.is_global_zero, where=_WHERE, trust_hint="pass those types in `safe_globals`.")
        try:
            checkpoint = engine.load(engine.store.entry(name), [MAIN], {MAIN: template}, collective=True)[MAIN]
        finally:
            if not own:
                engine.close()
        strict = StateDictOptions(strict=trainer.lightning_module.strict_loading)
        set_model_state_dict(model, checkpoint.pop("state_dict"), options=strict)
        for optimizer, state in zip(optimizers, checkpoint.pop("optimizer_states", [])):
            set_optimizer_state_dict(model, optimizer, state)
        return checkpoint

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._stop_listening()
        vars(trainer.strategy).pop("load_checkpoint", None)  # Lightning's methods again
        self._unwrap_loops(trainer)
        try:
            for engine in self._engines.values():
                engine.wait()  # a failed background save is raised here
                if isinstance(engine.store, _Store) and self.dirpath is not None:
                    self._forget_removed(engine.store)
        finally:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()


def _dcp_strategy(strategy: Any) -> bool:
    """Whether `strategy` is Lightning's FSDP2 one saving sharded state (each rank its part, with DCP)."""
    return isinstance(strategy, ModelParallelStrategy) and strategy._save_distributed_checkpoint


class _Store(NamedFiles):
    """Remembers what retention deleted, so that the callback's top-k forgets those files too."""

    def __init__(self, directory: str, layout: Any) -> None:
        super().__init__(directory, layout)
        self._removed: Set[str] = set()
        self._lock = threading.Lock()

    def remove(self, key: str) -> None:
        super().remove(key)
        with self._lock:
            self._removed.add(key)

    def take_removed(self) -> Set[str]:
        with self._lock:
            removed, self._removed = self._removed, set()
        return removed


class _Pending:
    """A save submitted, and the removals of the files it replaces, which wait for its commit (a
    background save commits on the worker thread; a failed one removes nothing)."""

    def __init__(self, store: NamedFiles) -> None:
        self.store, self.committed, self.removals = store, False, []
        self.lock = threading.Lock()

    def commit(self, key: str) -> None:
        with self.lock:
            self.committed, removals = True, self.removals
        for name in removals:
            if name != key:
                self.store.remove(name)

    def defer(self, name: str) -> bool:
        """Whether `name`'s removal waits for the commit (False: committed already, remove it now)."""
        with self.lock:
            if not self.committed:
                self.removals.append(name)
            return not self.committed


ModelCheckpoint.__module__ = "trainer_ckpt.lightning"
