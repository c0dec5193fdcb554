"""The ignite face (see trainer_ckpt/ignite.py, which imports it on first use)."""
import contextlib
import logging
import threading
import numbers
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, OrderedDict, Sequence, Tuple, Union

import ignite.distributed as idist
import ignite.handlers.checkpoint as _ignite
import torch
from ignite.engine import Engine as IgniteEngine
from ignite.engine import Events

from trainer_ckpt.faces.arguments import require_bools, require_policy
from trainer_ckpt.core import distributed, loaders, preemption
from trainer_ckpt.io import sharded
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine, uses_snapshots
from trainer_ckpt.core.logs import logs_to
from trainer_ckpt.stores import RNG, NamedFiles, named
from trainer_ckpt.stores.mirrored import local_place, mirrored
from trainer_ckpt.core.background import require_host_memory
from trainer_ckpt.core.rng import capture_rng, restore_rng
from trainer_ckpt.io import loading
if TYPE_CHECKING:  # the policies import AllenNLP's Registrable: imported when a policy is given
    from trainer_ckpt.policies.retention import RetentionPolicy
    from trainer_ckpt.policies.save import SavePolicy

__all__ = ["Checkpoint", "DiskSaver", "latest_checkpoint", "LAYOUT"]

logger = logging.getLogger("trainer_ckpt._ignite_face")  # its 0.1 name, which users may filter on
# Where our messages go besides trainer_ckpt's loggers, when no ignite Engine is at hand (its
# `engine.logger` otherwise): under "ignite", as ignite's own handlers log, so that
# `setup_logger()` formats them.
_IGNITE_LOGGER = logging.getLogger("ignite.handlers.checkpoint")
MAIN = named.MAIN
LAYOUT = named.IGNITE  # ignite names every checkpoint `.pt` (`Checkpoint.ext`)


class UnsafeCheckpoint(loading.UnsafeCheckpoint, pickle.UnpicklingError):
    """A checkpoint holds types `weights_only` loading refuses (nothing in it was run); an
    `UnpicklingError`, as ignite's `load_objects` raises for it."""


_BAD: Dict[type, type] = {}  # ignite's exception type -> ours, a subclass of both


def _bad_type(peer: type) -> type:
    cls = _BAD.get(peer)
    if cls is None:
        try:
            cls = type("BadCheckpoint", (loading.BadCheckpoint, peer),
                       {"__module__": "trainer_ckpt.ignite", "__str__": lambda self: self.message})
        except TypeError:  # a type that cannot be a base alongside Exception's
            cls = _bad_type(RuntimeError)
        _BAD[peer] = cls
    return cls


def _bad_checkpoint(message: str, cause: Optional[BaseException]) -> loading.BadCheckpoint:
    """
    A `BadCheckpoint` that is also what ignite's `load_objects` raises for the same file (the
    error of its `torch.load`): `FileNotFoundError` for a missing one (with its errno and
    filename), `RuntimeError` for a torn one, `EOFError` for an empty one; `RuntimeError` where
    ignite would load it (its bytes differ from its record).
    """
    peer = type(cause) if isinstance(cause, Exception) and not isinstance(cause, loading.BadCheckpoint) else RuntimeError
    try:
        if isinstance(cause, OSError) and cause.errno is not None:
            error = _bad_type(peer)(cause.errno, message, cause.filename)
        else:
            error = _bad_type(peer)(message)
    except Exception:  # a constructor that wants other arguments (UnicodeDecodeError's five)
        error = _bad_type(RuntimeError)(message)
    error.message = message
    return error


class _Call:
    """
    What our Checkpoint tells its DiskSaver of the save it asks for, which ignite's
    `save_handler(checkpoint, filename, metadata)` has no room for: the point in training, what the
    record adds, the retention, and the deletions to defer until the commit. The saver fills in
    the outcome: whether the save was submitted, then committed (on the worker thread, for a
    background save); `before` is ignite's list as it was, put back when the save fails.
    """

    def __init__(self, moment: CheckpointInfo, extra: Dict[str, Any],
                 retention: Optional[Tuple["RetentionPolicy", Callable]], before: List[Any]) -> None:
        self.moment, self.extra, self.retention, self.before = moment, extra, retention, before
        self.deferred: List[str] = []
        self.submitted = self.committed = False


class _Store(NamedFiles):
    """Remembers what retention deleted, so that the handler forgets those names too."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, LAYOUT)
        self.removed: set = set()

    def remove(self, key: str) -> None:
        super().remove(key)
        self.removed.add(key)


class DiskSaver(_ignite.DiskSaver):
    """
    ignite's `DiskSaver(dirname, atomic=True, create_dir=True, require_empty=True,
    save_on_rank=0, **kwargs)`, on the engine. Writes are always atomic and durable (`atomic`
    is accepted; `False` changes nothing). `kwargs` go to `torch.save` as in ignite. Plus:

    background : `bool` (default `False`)
        A save copies the state into reused CPU buffers and returns; a worker thread writes it.
        `wait()` waits for it (so do `remove`, `latest_checkpoint` and process exit).
    max_host_memory : `int` (default `None`)
        Bytes of host memory the snapshot buffers of background saves may take; a state whose
        snapshot would take more is saved on the training thread instead. None: no bound.
    safe_globals : `Sequence[type]` (default `()`)
        Your own types that may be unpickled from checkpoints you trust.
    dirname may be an fsspec URL (`"s3://bucket/run"`): checkpoints are written into a local
    staging directory (`staging_dir`, default one per URL under the temp directory: `dirname`
    then names it), then uploaded whole, record last; retention deletes in the bucket too; an
    empty staging directory is filled from the bucket when the checkpoints are listed
    (`latest_checkpoint(url, storage_options=...)`). `storage_options` go to fsspec.
    """

    def __init__(
        self,
        dirname: Union[str, Path],
        atomic: bool = True,
        create_dir: bool = True,
        require_empty: bool = True,
        save_on_rank: int = 0,
        *,
        background: bool = False,
        safe_globals: Sequence[Any] = (),
        clock: Optional[Callable[[], float]] = None,
        storage_options: Optional[Dict[str, Any]] = None,
        staging_dir: Optional[str] = None,
        max_host_memory: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        require_bools("trainer_ckpt.ignite.DiskSaver", background=background)
        require_host_memory("trainer_ckpt.ignite.DiskSaver", max_host_memory)
        dirname, self.url = local_place("trainer_ckpt.ignite.DiskSaver", "dirname", dirname, storage_options, staging_dir)
        self.storage_options = storage_options
        super().__init__(dirname, atomic, create_dir, require_empty, save_on_rank, **kwargs)
        self._local = _Store(str(self.dirname))
        self._store = mirrored(self._local, self.url, self.storage_options, "trainer_ckpt.ignite.DiskSaver")
        self.background, self.safe_globals, self.clock = background, list(safe_globals), clock
        self.max_host_memory = max_host_memory
        self._engine: Optional[Engine] = None
        self._calls = threading.local()  # .current: the _Call our Checkpoint is making on this thread (`serving`)

    @property
    def engine(self) -> Engine:
        """The engine, made at first use: only then does the writer lock the directory and clean up."""
        if self._engine is None:
            self._engine = Engine(
                self._store, background=self.background, safe_globals=self.safe_globals,
                primary=idist.get_rank() == self.save_on_rank, clock=self.clock,
                where="trainer_ckpt.ignite.DiskSaver", trust_hint="pass those types in `safe_globals`.",
                save_kwargs=self.kwargs, max_host_memory=self.max_host_memory,
            )
            self._engine.clean_up()
        return self._engine

    @contextlib.contextmanager
    def serving(self, call: _Call) -> Iterator[None]:
        """Within it, this thread's saves and removals are `call`'s."""
        previous, self._calls.current = getattr(self._calls, "current", None), call
        try:
            yield
        finally:
            self._calls.current = previous

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Optional[Mapping] = None) -> None:
        call: Optional[_Call] = getattr(self._calls, "current", None)
        with logs_to(None if call is not None else _IGNITE_LOGGER):  # our Checkpoint routes to its engine's logger
            self._save(call, checkpoint, filename, metadata)

    def _save(self, call: Optional[_Call], checkpoint: Mapping, filename: str, metadata: Optional[Mapping]) -> None:
        if idist.get_rank() != self.save_on_rank and not sharded.is_sharded(checkpoint):
            return  # sharded state (FSDP2): every rank writes its shards
        engine = self.engine
        info = call.moment if call is not None else CheckpointInfo(0, 0, time=engine.clock())
        record = dict(call.extra) if call is not None else {}
        if metadata is not None:
            record["ignite"] = {k: v for k, v in metadata.items() if v is None or isinstance(v, (str, numbers.Number))}
        deferred = list(call.deferred) if call is not None else []
        self._local.removed.discard(filename)  # saved again under the same name

        def after_commit(key: str) -> None:
            if call is not None:
                call.committed = True
            self._remove_now([name for name in deferred if name != key])

        if call is not None:
            call.submitted = True
        engine.save(filename, {MAIN: checkpoint, RNG: capture_rng()}, info, record=record, after_commit=after_commit,
                    retention=call.retention if call is not None else None)

    def remove(self, filename: str) -> None:
        """Deletes a checkpoint and its hidden files; within our `Checkpoint`'s call, only once the
        checkpoint that replaces it is committed."""
        call: Optional[_Call] = getattr(self._calls, "current", None)
        if call is not None:
            call.deferred.append(filename)
            return
        if idist.get_rank() == self.save_on_rank:
            with logs_to(_IGNITE_LOGGER):
                self.engine.wait()
                self._remove_now([filename])

    def _remove_now(self, names: List[str]) -> None:
        for name in names:
            self.engine.store.remove(name)

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed."""
        if self._engine is not None:
            self._engine.wait()

    def drain(self) -> None:
        """Waits for a save in flight and for its uploads (to a bucket); raises their errors."""
        if self._engine is not None:
            self._engine.drain()


class Checkpoint(_ignite.Checkpoint):
    """
    ignite's `Checkpoint(to_save, save_handler, filename_prefix="", score_function=None,
    score_name=None, n_saved=1, global_step_transform=None, filename_pattern=None,
    include_self=False, greater_or_equal=False, save_on_rank=0)`; a path as `save_handler`
    becomes our `DiskSaver`. Plus, as keywords:

    save_policy : `SavePolicy` (default `None`)
        Saves only when the policy says so, wherever the handler is attached (e.g. on
        `Events.ITERATION_COMPLETED` with `SaveEveryNumSeconds(600)`). It sees
        `(epochs completed, batches into the epoch)`.
    retention_policy : `RetentionPolicy` (default `None`)
        Which of this handler's checkpoints to keep, instead of `n_saved` (give one, not both);
        the newest is never deleted, nor any file this handler did not write.
    save_on_signals : `Sequence[str | int]` (default `None`)
        Signals to save on (`["SIGTERM", "SIGUSR1"]`: what SLURM or a spot VM sends before it
        kills the job). The handler only records the signal; at the next step boundary of the
        trainer (after an iteration's handlers, or the epoch's at its last iteration) this handler
        saves its checkpoint (named as your configuration names it at that iteration, kept by
        `n_saved` / `retention_policy` as any other), waits until it is committed, then exits with
        status 128 + the signal's number. Handlers installed before are still called. The trainer
        is the `Engine` in `to_save`, or the one given to `attach`. Not with a score: a save at a
        step has no score to rank it by.
    exit_on_signal : `bool` (default `True`)
        False: after that save, training goes on.
    background, safe_globals, max_host_memory
        For the `DiskSaver` made from a path (see `DiskSaver`).
    A torchdata `StatefulDataLoader` in `to_save` (the one the trainer runs on) is saved at its
    position, with its workers' random state, and resumed there exactly by `load_objects`.
    Messages (a checkpoint moved into `corrupt/`, incomplete ones removed) go to the handlers of
    the Engine's `engine.logger` (e.g. `trainer.logger = setup_logger("trainer")`) besides
    trainer_ckpt's own loggers.
    """

    def __init__(
        self,
        to_save: Mapping,
        save_handler: Union[str, Path, Callable, _ignite.BaseSaveHandler],
        filename_prefix: str = "",
        score_function: Optional[Callable] = None,
        score_name: Optional[str] = None,
        n_saved: Optional[int] = 1,
        global_step_transform: Optional[Callable] = None,
        filename_pattern: Optional[str] = None,
        include_self: bool = False,
        greater_or_equal: bool = False,
        save_on_rank: int = 0,
        *,
        save_policy: Optional["SavePolicy"] = None,
        retention_policy: Optional["RetentionPolicy"] = None,
        background: bool = False,
        safe_globals: Sequence[Any] = (),
        save_on_signals: Optional[Sequence[Union[str, int]]] = None,
        exit_on_signal: bool = True,
        max_host_memory: Optional[int] = None,
    ) -> None:
        where = "trainer_ckpt.ignite.Checkpoint"
        require_policy(where, "save_policy", save_policy, "SavePolicy")
        require_policy(where, "retention_policy", retention_policy, "RetentionPolicy")
        require_bools(where, exit_on_signal=exit_on_signal)
        signals = preemption.parse(where, "save_on_signals", save_on_signals)
        if signals and (score_function is not None or score_name is not None):
            raise ValueError(
                f"{where}: `save_on_signals` saves at a step, which has no score to rank the checkpoint by, got "
                f"score_function={score_function!r}, score_name={score_name!r}. Give save_on_signals to a Checkpoint "
                "without a score (the one that saves the training state)."
            )
        if retention_policy is not None and n_saved != 1:
            raise ValueError(
                f"{where}: give at most one of `n_saved` and `retention_policy`, got n_saved={n_saved!r} and "
                f"{retention_policy!r}. Express the whole rule in the retention policy."
            )
        if isinstance(save_handler, (str, Path)):
            save_handler = DiskSaver(save_handler, create_dir=True, save_on_rank=save_on_rank,
                                     background=background, safe_globals=safe_globals, max_host_memory=max_host_memory)
        elif background or safe_globals or max_host_memory is not None:
            raise ValueError(
                f"{where}: `background` and `safe_globals` are for a DiskSaver this handler makes from a path, as is "
                f"`max_host_memory`, got save_handler={save_handler!r}. Pass them to trainer_ckpt.ignite.DiskSaver instead."
            )
        if retention_policy is not None and not isinstance(save_handler, DiskSaver):
            raise ValueError(
                f"{where}: `retention_policy` needs trainer_ckpt.ignite.DiskSaver (or a path) as save_handler, got "
                f"{save_handler!r}. Use n_saved with other handlers."
            )
        super().__init__(
            to_save, save_handler, filename_prefix, score_function, score_name,
            None if retention_policy is not None else n_saved, global_step_transform, filename_pattern,
            include_self, greater_or_equal, save_on_rank,
        )
        for obj in to_save.values():
            if loaders.is_stateful(obj):
                loaders.prepare(obj)  # before its workers start: they carry their random state from then on
        self.save_policy, self.retention_policy = save_policy, retention_policy
        self._previous: List[CheckpointInfo] = []
        self._pending: Optional[_Call] = None  # a background save in flight
        self._saved_at: Optional[Tuple[IgniteEngine, int]] = None  # the engine and iteration of this handler's last save
        self._signals, self._exit_on_signal = signals, exit_on_signal
        self._preemption = preemption.Preemption(signals, exit_on_signal, where) if signals else None
        self._trainer: Optional[IgniteEngine] = None
        if signals:
            trainer = next((obj for obj in to_save.values() if isinstance(obj, IgniteEngine)), None)
            if trainer is not None:
                self.attach(trainer)
        if isinstance(save_handler, DiskSaver) and uses_snapshots(save_handler.background):
            # After the first iteration (the optimizer's state exists then), the snapshot buffers
            # are allocated on the worker thread, so that the first save only copies.
            for obj in to_save.values():
                if isinstance(obj, IgniteEngine):
                    obj.add_event_handler(Events.ITERATION_COMPLETED(once=1), self._prepare)
                    break

    def _prepare(self, engine: IgniteEngine) -> None:
        saver = self.save_handler
        if idist.get_rank() == saver.save_on_rank:
            checkpoint = self._setup_checkpoint()
            if not sharded.is_sharded(checkpoint):
                with logs_to(engine.logger):
                    saver.engine.prepare({MAIN: checkpoint})

    def attach(self, trainer: IgniteEngine) -> None:
        """
        Checks for `save_on_signals` at every step boundary of `trainer`. Done at construction for
        the Engine in `to_save`; call it before `trainer.run()` when `to_save` holds none.
        """
        if not self._signals:
            raise ValueError(f"trainer_ckpt.ignite.Checkpoint.attach: this handler has no `save_on_signals`, got "
                             f"attach({trainer!r}). Give save_on_signals=[...] when you build the Checkpoint.")
        self._trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._listen)
        trainer.add_event_handler(Events.COMPLETED, self._stop_listening)
        self._listen(trainer)

    def _listen(self, trainer: IgniteEngine) -> None:
        """
        At each run's start: listens again after an earlier run's end, and puts the checks last
        among the handlers of their events, so that the iteration's (or epoch's) own handlers (a
        periodic save, a scheduler's step) run before the state is saved.
        """
        if self._preemption is None:
            self._preemption = preemption.Preemption(self._signals, self._exit_on_signal, "trainer_ckpt.ignite.Checkpoint")
        self._saved_at = None
        for event, check in ((Events.ITERATION_COMPLETED, self._check_iteration), (Events.EPOCH_COMPLETED, self._check)):
            if trainer.has_event_handler(check, event):
                trainer.remove_event_handler(check, event)
            trainer.add_event_handler(event, check)

    def _stop_listening(self, trainer: IgniteEngine) -> None:
        if self._preemption is not None:
            self._preemption.close()
            self._preemption = None

    def _check_iteration(self, trainer: IgniteEngine) -> None:
        length = trainer.state.epoch_length
        if not (length and trainer.state.iteration % length == 0):  # an epoch's last: after EPOCH_COMPLETED's handlers
            self._check(trainer)

    def _check(self, trainer: IgniteEngine) -> None:
        """A step boundary (a collective in a distributed run): on a signal, saves here, waits for it, exits."""
        signum = self._preemption.requested()
        if signum is None:
            return
        saver = self.save_handler
        with logs_to(trainer.logger):
            if self._saved_at != (trainer, trainer.state.iteration):  # else a periodic save just wrote this step
                moment = _moment(trainer, saver.engine.clock if isinstance(saver, DiskSaver) else None)
                if self.save_policy is not None:
                    self._previous.append(moment)
                self._write(trainer, moment)
            self._preemption.finish(signum, saver.drain if isinstance(saver, DiskSaver) else lambda: None)

    def __call__(self, engine: IgniteEngine, *args: Any, **kwargs: Any) -> None:
        if self._signals and self._trainer is None:
            self._stop_listening(engine)  # it cannot act
            raise ValueError(
                f"trainer_ckpt.ignite.Checkpoint: `save_on_signals` needs the trainer whose steps it checks, got no "
                f"Engine in to_save ({sorted(self.to_save)}). Put the trainer in to_save or call handler.attach(trainer) "
                "before trainer.run()."
            )
        with logs_to(getattr(engine, "logger", None)):
            self._checkpoint(engine, *args, **kwargs)

    def _checkpoint(self, engine: IgniteEngine, *args: Any, **kwargs: Any) -> None:
        saver = self.save_handler
        clock = saver.engine.clock if isinstance(saver, DiskSaver) else None
        moment = _moment(engine, clock)
        if self.save_policy is not None:
            if not self._previous:  # where this process (re)started
                self._previous.append(CheckpointInfo(*moment.progress, time=moment.time))
            if not distributed.should_save(self.save_policy, moment, self._previous):
                return
            self._previous.append(moment)
        self._write(engine, moment, *args, **kwargs)

    def _write(self, engine: IgniteEngine, moment: CheckpointInfo, *args: Any, **kwargs: Any) -> None:
        """Saves through ignite's `__call__` (its file name, list and `n_saved`) and our DiskSaver."""
        self._saved_at = (engine, engine.state.iteration)
        saver = self.save_handler
        if not isinstance(saver, DiskSaver):
            return super().__call__(engine, *args, **kwargs)
        self._settle()
        self._forget_removed()
        mine = f"{self.filename_prefix}|{self.score_name}"  # retention judges only what this handler wrote
        # ignite lists the new file (and drops the one it replaces) before it saves: a save that
        # fails puts the list back, so that `last_checkpoint` and the next decisions stay on what was committed.
        retention = None
        if self.retention_policy is not None:
            retention = (self.retention_policy, lambda entry: entry.record.get("handler") == mine)
        call = _Call(moment, {"handler": mine, "iteration": engine.state.iteration, "epoch": engine.state.epoch},
                     retention, list(self._saved))
        try:
            with saver.serving(call):
                super().__call__(engine, *args, **kwargs)
        except BaseException:
            if call.submitted and saver.background:  # raised after the submission: the worker's outcome decides
                self._pending = call
            elif not call.committed:
                self._saved = call.before
            raise
        if call.submitted and not call.committed:
            self._pending = call  # in the background: settled at the next call, or by `last_checkpoint`
        self._forget_removed()

    def _settle(self) -> None:
        """Waits for a background save in flight; if it failed, ignite's list goes back to what was
        committed before it, and its error is raised."""
        call, self._pending = self._pending, None
        if call is None:
            return
        try:
            self.save_handler.wait()
        finally:
            if not call.committed:
                self._saved = call.before
                self._forget_removed()

    @property
    def last_checkpoint(self) -> Optional[Union[str, Path]]:
        """As ignite's: the newest (or best) committed checkpoint. Waits for a background save in
        flight, and raises its error if it failed (naming the file it did not write)."""
        if isinstance(self.save_handler, DiskSaver):
            self._settle()
        return super().last_checkpoint

    def state_dict(self) -> "OrderedDict[str, Any]":
        if isinstance(self.save_handler, DiskSaver):
            self._settle()
        return super().state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        self._pending = None  # the list loaded replaces the one a save in flight would put back
        super().load_state_dict(state_dict)

    def _forget_removed(self) -> None:
        """Drops from ignite's list what our retention deleted (on the worker thread, when in the background)."""
        saver = self.save_handler
        if self.retention_policy is not None and saver._local.removed:
            gone = saver._local.removed
            self._saved = [item for item in self._saved if item.filename not in gone]

    @staticmethod
    def load_objects(to_load: Mapping, checkpoint: Union[str, Mapping, Path], **kwargs: Any) -> None:
        """
        As ignite's, with its exception types (a missing file raises FileNotFoundError, a torn
        one RuntimeError..., each also a `trainer_ckpt.io.loading.BadCheckpoint`). A path is verified
        against its record first (when it has one) and loaded with `weights_only=True`
        (`safe_globals=[...]` allows your own types); when `to_load` holds
        an ignite `Engine`, the random state saved with the checkpoint is put back as the run
        resumes (`restore_rng=False` to skip). A torchdata `StatefulDataLoader` in `to_load` is
        put at its saved position, its iterator made at once (before that random state goes back:
        making it draws from the random state): the Engine's run goes on with the next batch.
        Messages go to that Engine's `engine.logger` too.
        """
        restore = kwargs.pop("restore_rng", True)
        safe_globals = kwargs.pop("safe_globals", ())
        engines = [obj for obj in to_load.values() if isinstance(obj, IgniteEngine)]
        stateful = [loaders.prepare(obj) for obj in to_load.values() if loaders.is_stateful(obj)]
        rng = None
        if isinstance(checkpoint, (str, Path)):
            _ignite.Checkpoint._check_objects(to_load, "load_state_dict")  # as ignite: before the file is read
            with logs_to(engines[0].logger if engines else _IGNITE_LOGGER):
                checkpoint, rng = _load(str(checkpoint), safe_globals, to_load)
        _ignite.Checkpoint.load_objects(to_load, checkpoint, **kwargs)
        for loader in stateful:
            loaders.prime(loader)
        if restore and rng is not None and engines:
            _restore_on_resume(engines[0], rng, stateful)


def latest_checkpoint(dirname: Union[str, Path], filename_prefix: str = "", storage_options: Optional[Dict[str, Any]] = None,
                      staging_dir: Optional[str] = None) -> Optional[str]:
    """
    The path of the newest checkpoint in `dirname` (of those named `{filename_prefix}_...` when a
    prefix is given) that verifies against its record (ignite's own files: that loads), or None
    when there is none. Newer bad ones are skipped with a WARNING. Reads only. `dirname` may be
    a URL (a DiskSaver's): the local copy's path, downloaded when the staging directory is empty.
    The WARNINGs go to ignite's "ignite.handlers.checkpoint" logger too (`setup_logger()` formats them).
    """
    directory, url = local_place("trainer_ckpt.ignite.latest_checkpoint", "dirname", dirname, storage_options, staging_dir)
    local = NamedFiles(str(directory), named.ignite_layout(filename_prefix))
    engine = Engine(mirrored(local, url, storage_options, "trainer_ckpt.ignite.latest_checkpoint"), read_only=True,
                    where="trainer_ckpt.ignite.latest_checkpoint", logger=_IGNITE_LOGGER)
    found = engine.newest_good(load=False)
    return None if found is None else found[0].paths[MAIN]


def _moment(engine: IgniteEngine, clock: Optional[Callable[[], float]]) -> CheckpointInfo:
    """The point the engine reached, as our policies and records see it."""
    state = engine.state
    length = state.epoch_length or 0
    if length:
        epochs, batches = divmod(state.iteration, length)
    elif engine.last_event_name == Events.EPOCH_COMPLETED:
        epochs, batches = state.epoch, 0
    else:
        epochs, batches = max(state.epoch - 1, 0), state.iteration
    metrics = {k: v for k, v in (state.metrics or {}).items() if isinstance(v, numbers.Number)}
    ends = state.max_epochs is not None and batches == 0 and epochs >= state.max_epochs
    return CheckpointInfo(epochs, batches, time=(clock or time.time)(), metrics=metrics,
                          total_batches_completed=state.iteration, training_ends=ends)


def _load(path: str, safe_globals: Sequence[Any], to_load: Mapping) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """A checkpoint file (verified when it has a record) and its random state, if saved."""
    directory, name = os.path.split(path)
    entry = NamedFiles(directory, LAYOUT).entry(name)
    expected = entry.record.get("files", {})
    # Sharded state (DCP's directory): every rank loads its shards into the live state dicts.
    template, collective = _templates(to_load) if "parts" in expected.get(MAIN, {}) else (None, False)
    try:
        # numpy's types: DeterministicEngine's random state is numpy's; ignite's own `load_objects`
        # refuses them under weights_only=True, so it cannot resume a DeterministicEngine from a file.
        with loading.allowing(list(safe_globals) + loading.numpy_types()):
            loaded = loading.read(entry.paths, expected, {MAIN: template}, collective)
    except loading.UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(
            f"trainer_ckpt.ignite.Checkpoint.load_objects: {path} holds types that are not allowed to load, "
            f"got: {e} Nothing in it was run. If you trust this file, pass those types in `safe_globals=[...]`."
        ) from e
    except loading.BadCheckpoint as e:
        # ignite's own exception type for the same file (FileNotFoundError when it is missing...), and ours.
        raise _bad_checkpoint(
            f"trainer_ckpt.ignite.Checkpoint.load_objects: {path} is not usable, got: {e}. Load the newest good "
            f"one: trainer_ckpt.ignite.latest_checkpoint({directory!r}).", e.__cause__,
        ) from e
    return loaded[MAIN], loaded.get(RNG)


def _templates(to_load: Mapping) -> Tuple[Optional[Dict[str, Any]], bool]:
    """The live state dicts the shards load into (ignite saves a lone object's at the top), and whether they are sharded."""
    objects = {k: getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
               for k, obj in to_load.items()}
    found = {k: sharded.template(obj) for k, obj in objects.items() if hasattr(obj, "state_dict")}
    if len(found) == 1:
        found = {**found, **next(iter(found.values()))}
    together = distributed.world_size() > 1 and sharded.is_sharded(found)
    return found, together


def _restore_on_resume(engine: IgniteEngine, rng: Dict[str, Any], primed: Sequence[Any] = ()) -> None:
    """
    Puts the random state back when `engine.run` resumes: at STARTED (before the data iterator
    is made, which may draw from it), and, when resuming within an epoch, once more right before
    the first iteration (after the data iterator, DeterministicEngine's reseeding and the first
    batch), so that the iteration runs with the very state the interrupted run had after the saved one.
    Not once more when the run's data is a loader in `primed` (resumed at its position, its
    iterator already made): the interrupted run drew from the random state for that batch too
    (an augmentation, without workers), and so does the resumed run.
    """

    # A DeterministicEngine puts its own saved state back as soon as it has made the data
    # iterator, before the batch sampler draws the epoch's order (lazily, at the first batch): the
    # order then differs from the interrupted run's. Ours goes back after the first batch instead.
    if getattr(engine.state, "rng_states", None) is not None:
        engine.state.rng_states = None

    def at_start(e: IgniteEngine) -> None:
        e.remove_event_handler(at_start, Events.STARTED)
        restore_rng(rng)
        length = e.state.epoch_length
        if length and e.state.iteration % length and not any(e.state.dataloader is loader for loader in primed):
            e.add_event_handler(Events.ITERATION_STARTED, before_first)

    def before_first(e: IgniteEngine) -> None:
        e.remove_event_handler(before_first, Events.ITERATION_STARTED)
        restore_rng(rng)

    engine.add_event_handler(Events.STARTED, at_start)


for _public in (Checkpoint, DiskSaver):
    _public.__module__ = "trainer_ckpt.ignite"
