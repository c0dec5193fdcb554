"""The mmengine face (see trainer_ckpt/mmengine.py, which imports it on first use)."""
import contextlib
import hashlib
import logging
import os
import pickle
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence

from mmengine.dist import is_main_process, master_only
from mmengine.hooks import CheckpointHook as _CheckpointHook
from mmengine.logging import MMLogger, print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop, EpochBasedTrainLoop, IterBasedTrainLoop

from trainer_ckpt.faces.arguments import require_bools, require_policy
from trainer_ckpt.core import distributed, loaders, preemption
from trainer_ckpt.io import sharded
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.engine import Engine, UnsafeCheckpointError, uses_snapshots
from trainer_ckpt.core.logs import logs_to
from trainer_ckpt.stores import RNG, Layout, NamedFiles, named
from trainer_ckpt.stores.mirrored import is_url, local_place, mirrored
from trainer_ckpt.core.background import require_host_memory
from trainer_ckpt.core.rng import capture_rng, own_part, restore_rng
from trainer_ckpt.faces._mmengine import patches
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable
if TYPE_CHECKING:  # the policies import AllenNLP's Registrable: imported when a policy is given
    from trainer_ckpt.policies.retention import RetentionPolicy

__all__ = ["CheckpointHook", "LAYOUT", "mmengine_safe_globals"]

logger = logging.getLogger("trainer_ckpt._mmengine_face")  # its 0.1 name, which users may filter on
_WHERE = "trainer_ckpt.mmengine.CheckpointHook"
MAIN = named.MAIN
POINTER = "last_checkpoint"
LAYOUT = named.MMENGINE
LOADER = "train_loader"  # in a checkpoint's random state: the runner's StatefulDataLoader's state, saved with it


def _history_buffer_statistic(obj: Any, name: str) -> Any:
    """Stands in for `getattr` while unpickling: a HistoryBuffer's state names its statistics
    methods (`getattr(HistoryBuffer, "mean")`); nothing else may be looked up."""
    if obj is HistoryBuffer and name in {"min", "max", "current", "mean"} | set(HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not allowed in a checkpoint")


def mmengine_safe_globals() -> List[Any]:
    """
    Exactly the types an mmengine checkpoint holds besides tensors and plain containers: the
    message hub's `HistoryBuffer`s (and the statistics methods their state names), numpy arrays,
    scalars and dtypes (metrics, best scores). Everything else is still refused.
    """
    return [HistoryBuffer, (_history_buffer_statistic, "builtins.getattr"), *loading.numpy_types()]


def _read(path: str, safe_globals: Sequence[Any] = (), roles: Sequence[str] = (MAIN,)) -> Dict[str, Any]:
    """A checkpoint's files ({role: object}) loaded as mmengine loads them (onto the CPU), with exactly
    the types mmengine's checkpoints need allowed, and a file of ours checked against its record."""
    directory, name = os.path.split(path)
    entry = NamedFiles(directory, LAYOUT).entry(name)
    try:
        with loading.allowing(mmengine_safe_globals() + list(safe_globals)):
            return loading.read({r: p for r, p in entry.paths.items() if r in roles}, entry.record.get("files", {}))
    except loading.UnsafeCheckpoint as e:
        raise UnsafeCheckpointError(
            f"{_WHERE}: {path} holds types that are not allowed to load, got: {e} Nothing in it "
            "was run. If you trust this file, pass those types in the hook's `safe_globals`."
        ) from e
    except loading.BadCheckpoint as e:
        if not entry.record and e.__cause__ is not None:
            raise e.__cause__  # a file not ours: the error torch.load gives mmengine for it
        raise


def _load_local(path: str, safe_globals: Sequence[Any] = ()) -> Any:
    """A checkpoint file, as `_read` loads it."""
    return _read(path, safe_globals)[MAIN]


def _load_for_mmengine(path: str, safe_globals: Sequence[Any]) -> Any:
    """What mmengine's loader reads of a checkpoint our hook named (when not handed over): its messages go to mmengine's logger."""
    with logs_to(MMLogger.get_current_instance()):
        return _load_local(path, safe_globals)


patches.install(_load_for_mmengine)


def _local(value: Any) -> bool:
    """Whether mmengine's `backend_args` / `file_client_args` name the local disk."""
    return value is None or (isinstance(value, dict) and value.get("backend", "local") in ("local", "disk"))


@HOOKS.register_module(name="TrainerCkptCheckpointHook")
class CheckpointHook(_CheckpointHook):
    """
    mmengine 0.10's `CheckpointHook`, same arguments, files and contents, on trainer_ckpt's engine.
    In a config: `default_hooks=dict(checkpoint=dict(type=CheckpointHook, ...))`, or
    `type="TrainerCkptCheckpointHook"` once `trainer_ckpt.mmengine` is imported (e.g. through
    `custom_imports=dict(imports=["trainer_ckpt.mmengine"])`). Plus, as keywords:

    background : `bool` (default `False`)
        A save copies the state into reused CPU buffers and returns; a worker thread writes it.
    restore_rng : `bool` (default `True`)
        On resume, put back the random state saved with the checkpoint (python, numpy, torch,
        every CUDA device) before training goes on. And validation's draws are undone when it
        ends (its data loader draws from the global random state after a checkpoint), so that
        a resumed run, which does not validate again, draws what an uninterrupted one does.
    safe_globals : `Sequence[type]` (default `()`)
        Your own types that may be unpickled from checkpoints you trust, besides what mmengine's
        checkpoints need (`mmengine_safe_globals()`).
    retention_policy : `RetentionPolicy` (default `None`)
        Which periodic checkpoints to keep, instead of `max_keep_ckpts` (give one, not both);
        the newest is never deleted, nor `best_*` or published files.
    save_on_signals : `Sequence[str | int]` (default `None`)
        Signals (`["SIGTERM", "SIGUSR1"]`) on which to save `iter_{N}.pth` at the iteration
        training is in (every rank agrees), as a periodic save would, then exit with status
        128 + the signal's number once it is committed, so that the scheduler requeues the job.
        Needs `by_epoch=False` and an iteration-based loop: mmengine resumes an epoch-based
        loop only at the start of an epoch.
    exit_on_signal : `bool` (default `True`)
        False: after that save, training goes on.
    max_host_memory : `int` (default `None`)
        Bytes the snapshot buffers of `background` saves may take; a larger state is saved on
        the training thread from the live tensors instead.
    out_dir may be an fsspec URL (`"s3://bucket/runs"`): checkpoints go into a local staging
    directory first (`staging_dir`, default one per URL under the temp directory), then to
    `{out_dir}/{work_dir's name}/` in the bucket, each file whole and the record last;
    `max_keep_ckpts` deletes there too; `resume=True` on a new machine downloads from it.
    `storage_options` go to fsspec.
    A torchdata `StatefulDataLoader` given to the runner as its `train_dataloader` is saved with
    the random state and put back where it was on resume (exactly, with workers): the loop does
    not skip (load) again the batches already trained.
    Messages (a fallback to an older checkpoint, one moved into `corrupt/`) go to the runner's
    logger (its log file and console, in mmengine's format) besides trainer_ckpt's own loggers.
    """

    def __init__(
        self,
        interval: int = -1,
        by_epoch: bool = True,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        out_dir: Optional[str] = None,
        max_keep_ckpts: int = -1,
        save_last: bool = True,
        save_best: Any = None,
        rule: Any = None,
        greater_keys: Optional[Sequence[str]] = None,
        less_keys: Optional[Sequence[str]] = None,
        file_client_args: Optional[dict] = None,
        filename_tmpl: Optional[str] = None,
        backend_args: Optional[dict] = None,
        published_keys: Any = None,
        save_begin: int = 0,
        *,
        background: bool = False,
        restore_rng: bool = True,
        safe_globals: Sequence[Any] = (),
        retention_policy: Optional["RetentionPolicy"] = None,
        clock: Optional[Callable[[], float]] = None,
        storage_options: Optional[Dict[str, Any]] = None,
        staging_dir: Optional[str] = None,
        save_on_signals: Optional[Sequence[Any]] = None,
        exit_on_signal: bool = True,
        max_host_memory: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        require_bools(_WHERE, background=background, restore_rng=restore_rng, exit_on_signal=exit_on_signal)
        self.signals = preemption.parse(_WHERE, "save_on_signals", save_on_signals)
        if self.signals and by_epoch:
            raise ValueError(f"{_WHERE}: `save_on_signals` needs by_epoch=False (a save at the iteration training is in), "
                             f"got by_epoch={by_epoch!r}. Train with an iteration-based loop (train_cfg=dict(by_epoch=False, "
                             "max_iters=...)) and give this hook by_epoch=False.")
        require_host_memory(_WHERE, max_host_memory)
        require_policy(_WHERE, "retention_policy", retention_policy, "RetentionPolicy")
        if retention_policy is not None and max_keep_ckpts > 0:
            raise ValueError(f"{_WHERE}: give at most one of `max_keep_ckpts` and `retention_policy`, got "
                             f"max_keep_ckpts={max_keep_ckpts!r} and {retention_policy!r}. Express the whole rule in the policy.")
        out_dir, url = local_place(_WHERE, "out_dir", out_dir, storage_options, staging_dir)
        super().__init__(interval, by_epoch, save_optimizer, save_param_scheduler, out_dir, max_keep_ckpts, save_last,
                         save_best, rule, greater_keys, less_keys, file_client_args, filename_tmpl, backend_args,
                         published_keys, save_begin, **kwargs)
        for key, value in (("backend_args", backend_args), ("file_client_args", file_client_args)):
            if not _local(value):
                raise ValueError(
                    f"{_WHERE}: `{key}` must name the local disk, got {value!r}. For object storage give `out_dir` "
                    "as an fsspec URL (s3://bucket/runs) with `storage_options`, or use mmengine's own CheckpointHook."
                )
        self.background, self.restore_rng, self.safe_globals = background, restore_rng, list(safe_globals)
        self.exit_on_signal, self.max_host_memory = exit_on_signal, max_host_memory
        self._preemption: Optional[preemption.Preemption] = None  # listening from before_train to after_train
        self._saved_step: Optional[int] = None  # the step of the last checkpoint `_save_checkpoint_with_step` wrote
        self._prepared = False  # the background snapshot's buffers
        self.retention_policy, self.clock = retention_policy, clock
        self.url, self.storage_options, self._staging = url, storage_options, str(out_dir) if url else None
        if url is not None:
            mirrored(NamedFiles(self._staging, LAYOUT), url, storage_options, _WHERE)  # a bad URL fails here, not at the first save
        periodic = re.escape(self.filename_tmpl).replace(r"\{\}", r"\d+")
        self._periodic = re.compile(rf"^{periodic}$")
        self._engine: Optional[Engine] = None
        self._engine_dir: Optional[str] = None
        self._rng: Optional[Dict[str, Any]] = None
        self._before_val: Optional[Dict[str, Any]] = None  # the random state validation began with: put back after it
        self._loop: Optional[BaseLoop] = None  # the runner's training loop, from before_run
        self._loader: Any = None  # its StatefulDataLoader, if it has one
        self._logger: Optional[logging.Logger] = None  # the runner's: where our messages go too

    @property
    def _runner_logger(self) -> logging.Logger:
        """Where this hook's messages go besides trainer_ckpt's loggers: the runner's MMLogger (the
        current instance until `before_run` names the runner's)."""
        return self._logger or MMLogger.get_current_instance()

    # ---- resuming ------------------------------------------------------------------------

    def before_run(self, runner: Any) -> None:
        """With `resume=True`: finds the newest good checkpoint (the one `last_checkpoint` names,
        else older ones, with a WARNING; a newer one committed after `last_checkpoint` was written,
        a save interrupted in between, first, at INFO) and has the runner resume from it, loaded safely."""
        super().before_run(runner)
        self._logger = getattr(runner, "logger", None)
        self._train_loader(runner)
        with logs_to(self._runner_logger):
            self._resume(runner)

    def _resume(self, runner: Any) -> None:
        url = _work_dir_url(runner) if self.out_dir is None else None
        if url is not None:  # checkpoints would go into that local folder, and nothing to the bucket
            parent, base = url.rstrip("/").rsplit("/", 1)
            raise ValueError(
                f"{_WHERE}: the runner's `work_dir` must be a local directory when `out_dir` is not given, got "
                f"{url!r} (mmengine made it the local folder {runner.work_dir}, and the checkpoints would go there, "
                f"none to the bucket). Give the runner a local work_dir (e.g. 'work_dirs/{base}') and this hook "
                f"out_dir={parent!r} (the checkpoints then go to {parent}/{base}), with storage_options for the "
                "endpoint and credentials."
            )
        if not runner._resume:
            return
        if runner._load_from is not None:
            path = str(runner._load_from)
            if "://" in path:
                return  # a remote checkpoint: mmengine's own loaders
            loaded = _read(path, self.safe_globals, (MAIN, RNG))
            checkpoint, self._rng = loaded[MAIN], loaded.get(RNG)
        else:
            found = self._newest_good(runner.work_dir, _templates(runner))
            if found is None:
                return
            path, checkpoint = found
        runner._load_from = patches.hand_over(path, checkpoint, self.safe_globals)

    def _train_loader(self, runner: Any) -> None:
        """Finds the runner's training loop (built by `Runner.train` before `before_run`) and, if its
        loader is a StatefulDataLoader, prepares it (see core.loaders.prepare)."""
        loop = getattr(runner, "_train_loop", None)
        self._loop = loop if isinstance(loop, BaseLoop) else None
        loader = getattr(self._loop, "dataloader", None)
        self._loader = loader if loaders.is_stateful(loader) else None
        if self._loader is not None:
            loaders.prepare(self._loader)
            if isinstance(loop, IterBasedTrainLoop):
                patches.remake_iterator(loop)  # its workers started before the loader was prepared

    def _newest_good(self, work_dir: str, templates: Optional[Dict[str, Any]] = None) -> Optional[tuple]:
        pointer = os.path.join(work_dir, POINTER)
        wanted = None
        if os.path.exists(pointer):
            with open(pointer) as f:
                wanted = f.read().strip()
        directory = os.path.dirname(wanted) if wanted else work_dir
        if self.url is not None and not wanted:  # a new machine: the staging directory, filled from the bucket
            directory = os.path.join(self._staging, os.path.basename(os.path.normpath(work_dir)))
        periodic = self._periodic
        engine = Engine(
            self._store(directory, LAYOUT._replace(parse=lambda b: b if periodic.match(b) else None)),
            safe_globals=mmengine_safe_globals() + self.safe_globals, primary=is_main_process(), where=_WHERE,
            trust_hint="pass those types in the hook's `safe_globals`.", clock=self.clock, logger=self._runner_logger,
        )
        try:
            prefer = os.path.basename(wanted) if wanted else None
            lag = engine.lagging_pointer(pointer, prefer)
            if lag is not None:
                prefer = None  # the newest first: it was committed after the pointer was written
            found = engine.newest_good(prefer=prefer, templates=templates)
        finally:
            engine.close()
        if found is None:
            return None
        entry, states = found
        used = entry.paths[MAIN]
        if lag is not None and entry.info.time >= lag.info.time and os.path.basename(used) != os.path.basename(wanted):
            logger.info("%s names %s, but %s is newer and committed (a save was interrupted before updating %s): "
                        "resuming from %s", POINTER, wanted, used, POINTER, used)
        elif wanted and os.path.abspath(used) != os.path.abspath(wanted):
            logger.warning("%s names %s, which is missing or not usable: resuming from %s instead, the newest good "
                           "checkpoint in %s", POINTER, wanted, used, directory)
        self._rng = states.get(RNG)
        return entry.paths[MAIN], states[MAIN]

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        rng, self._rng = self._rng, None  # after Runner.resume, which may have reseeded
        position = own_part(rng).get(LOADER) if rng is not None else None
        if position is not None and self._loader is not None:
            self._put_back_loader(position)  # first: making its iterator draws from the random state
            if self.restore_rng:
                restore_rng(rng)
        elif rng is not None and self.restore_rng:
            if isinstance(runner.train_loop, IterBasedTrainLoop):  # it skips the batches already trained first
                patches.after_skipping(runner.train_loop, lambda: restore_rng(rng))
            else:
                restore_rng(rng)
        if self.signals:
            if isinstance(runner.train_loop, EpochBasedTrainLoop):
                raise ValueError(f"{_WHERE}: `save_on_signals` needs an iteration-based loop (mmengine resumes an "
                                 f"epoch-based one only at the start of an epoch), got {type(runner.train_loop).__name__}. "
                                 "Use train_cfg=dict(by_epoch=False, max_iters=...).")
            self._preemption = preemption.Preemption(self.signals, exit=self.exit_on_signal, where=_WHERE)

    def _put_back_loader(self, position: Dict[str, Any]) -> None:
        """The StatefulDataLoader where the checkpoint left it; an iteration-based loop goes on from
        there, without loading again the batches it skips on resume."""
        if isinstance(self._loop, IterBasedTrainLoop):
            patches.positioned(self._loop, lambda: loaders.restore(self._loader, position["state"]), position["passes"])
        else:  # an epoch-based loop makes its iterator when the epoch starts: the one `restore` made
            loaders.restore(self._loader, position["state"])

    def before_val(self, runner: Any) -> None:
        super().before_val(runner)
        if self.restore_rng:
            self._before_val = capture_rng()

    def after_val(self, runner: Any) -> None:
        """Puts back the random state validation began with: training goes on as if it had not run."""
        super().after_val(runner)
        if self._before_val is not None:
            restore_rng(self._before_val)
            self._before_val = None

    def _random_state(self) -> Dict[str, Any]:
        """What a checkpoint saves beside mmengine's: the random state training goes on with (the one
        validation began with, for a best checkpoint saved within it) and the StatefulDataLoader's."""
        state = dict(self._before_val) if self._before_val is not None else capture_rng()
        if self._loader is not None:
            passes = patches.passes(self._loop) if isinstance(self._loop, IterBasedTrainLoop) else 0
            state[LOADER] = {"state": self._loader.state_dict(), "passes": passes}
        return state

    # ---- saving --------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine of `out_dir`, made at the first save: only then does it lock and clean up."""
        directory = str(self.out_dir)
        if self._engine is None or self._engine_dir != directory:
            if self._engine is not None:
                self._engine.close()
            self._engine = Engine(
                self._store(directory, LAYOUT), background=self.background,
                safe_globals=mmengine_safe_globals() + self.safe_globals, primary=is_main_process(),
                clock=self.clock, where=_WHERE, trust_hint="pass those types in the hook's `safe_globals`.",
                logger=self._runner_logger, max_host_memory=self.max_host_memory,
            )
            self._engine_dir = directory
            self._engine.clean_up()
        return self._engine

    def _store(self, directory: str, layout: Layout) -> Any:
        """`directory`'s store; with a URL `out_dir`, mirrored to the same place under the URL."""
        store = NamedFiles(directory, layout)
        if self.url is None:
            return store
        remote = f"{self.url.rstrip('/')}/{os.path.relpath(directory, self._staging)}".replace("/./", "/")
        return mirrored(store, remote.rstrip("/."), self.storage_options, _WHERE)

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed."""
        if self._engine is not None:
            self._engine.wait()

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        if uses_snapshots(self.background) and not self._prepared and is_main_process():
            # The first iteration: the snapshot buffers are allocated on the worker thread, so that
            # the first save only copies (mmengine's checkpoint puts them under these keys).
            self._prepared = True
            optim_wrapper = getattr(runner, "optim_wrapper", None)
            state = {"state_dict": getattr(runner.model, "module", runner.model).state_dict()}
            if optim_wrapper is not None and hasattr(optim_wrapper, "state_dict"):
                state["optimizer"] = optim_wrapper.state_dict()
            if not sharded.is_sharded(state):
                self.engine.prepare({MAIN: state})
        signum = self._preemption.requested() if self._preemption is not None else None  # a collective
        if signum is not None:
            self._save_on_signal(runner, signum)

    def _save_on_signal(self, runner: Any, signum: int) -> None:
        """The checkpoint a periodic save at this iteration writes (unless one just did), then, once
        it is committed on the primary and every rank got there, the exit (unless `exit_on_signal=False`)."""
        step = runner.iter + 1
        if self._saved_step != step:
            runner.logger.info(f"Saving checkpoint at {step} iterations")
            self._save_checkpoint_with_step(runner, step, meta=dict(iter=step))
        self._preemption.finish(signum, self.drain)

    def _stop_listening(self) -> None:
        if self._preemption is not None:
            self._preemption.close()
            self._preemption = None

    def drain(self) -> None:
        """Waits for a background save in flight and for uploads to a bucket; raises their errors."""
        if self._engine is not None:
            self._engine.drain()

    def after_train(self, runner: Any) -> None:
        self._stop_listening()
        self.drain()  # `runner.train()` returns with every checkpoint committed and uploaded
        super().after_train(runner)

    def after_run(self, runner: Any) -> None:
        self._stop_listening()
        self.drain()
        super().after_run(runner)

    @contextlib.contextmanager
    def _saving(self, runner: Any, pending: List[str], pointer: Optional[str] = None) -> Iterator[None]:
        """Within: `runner.save_checkpoint` writes through the engine; `file_backend.remove` waits
        in `pending` until the new checkpoint is committed; then `pointer` goes into `last_checkpoint`."""
        def after_commit(name: str) -> None:
            for path in pending:
                if os.path.basename(path) != name:
                    self.engine.store.remove(os.path.basename(path))
            if pointer is not None and is_main_process():
                payload = pointer.encode()
                durable.atomic_write(os.path.join(runner.work_dir, POINTER), lambda f: f.write(payload))

        def save(checkpoint: Dict[str, Any], filename: str, file_client_args: Any = None, backend_args: Any = None) -> None:
            name = os.path.basename(str(filename))
            meta = checkpoint.get("meta", {})
            progress = (meta.get("epoch", 0), 0) if self.by_epoch else (0, meta.get("iter", 0))
            info = CheckpointInfo(*progress, time=self.engine.clock(), total_batches_completed=meta.get("iter"))
            retention = None
            if self.retention_policy is not None and self._periodic.match(name):
                periodic = self._periodic
                retention = (self.retention_policy, lambda entry: bool(periodic.match(entry.name)))
            self.engine.save(name, {MAIN: checkpoint, RNG: self._random_state()}, info,
                             record={"epoch": meta.get("epoch"), "iter": meta.get("iter")},
                             after_commit=after_commit, retention=retention)

        # `Runner.save_checkpoint` runs on the main process only; sharded state needs every rank.
        every_rank = not is_main_process() and _templates(runner) is not None
        with patches.deferring_removals(self, pending), patches.routing_saves(save), \
                (patches.on_every_rank(runner) if every_rank else contextlib.nullcontext()):
            yield

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: Dict[str, Any]) -> None:
        pending: List[str] = []
        # mmengine writes `last_checkpoint` in place after the save; ours goes atomically, after the commit.
        pointer = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        with self._saving(runner, pending, pointer if is_main_process() else None), \
                patches.skipping_pointer_write(os.path.join(runner.work_dir, POINTER)):
            super()._save_checkpoint_with_step(runner, step, meta)
        self._saved_step = step

    def _save_best_checkpoint(self, runner: Any, metrics: Dict[str, Any]) -> None:
        with self._saving(runner, []):
            super()._save_best_checkpoint(runner, metrics)

    @master_only
    def _publish_model(self, runner: Any, ckpt_path: str) -> None:
        """As mmengine's (the same file name and messages), loading safely and writing atomically."""
        self.wait()
        checkpoint = _load_local(ckpt_path, self.safe_globals)
        removed = [key for key in list(checkpoint) if key not in self.published_keys]
        for key in removed:
            checkpoint.pop(key)
        if removed:
            print_log(f"Key {removed} will be removed because they are not found in published_keys. If you want "
                      f"to keep them, please set `{removed}` in published_keys", logger="current")
        sha = hashlib.sha256(pickle.dumps(checkpoint)).hexdigest()
        final_path = os.path.splitext(ckpt_path)[0] + f"-{sha[:8]}.pth"
        durable.atomic_save(checkpoint, final_path)
        print_log(f"The checkpoint ({ckpt_path}) is published to {final_path}.", logger="current")



def _work_dir_url(runner: Any) -> Optional[str]:
    """The URL the runner's `work_dir` was given as (its config's, or what `osp.abspath` made of
    it: "s3://bucket/run" becomes the local folder `<cwd>/s3:/bucket/run`), or None."""
    cfg = getattr(runner, "cfg", None)
    given = cfg.get("work_dir") if cfg is not None and hasattr(cfg, "get") else None
    if is_url(str(given)):
        return str(given)
    mangled = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*):/+(.+)", os.path.relpath(runner.work_dir))
    return f"{mangled[1]}://{mangled[2]}" if mangled else None


def _templates(runner: Any) -> Optional[Dict[str, Any]]:
    """For sharded state (FSDP2) in a distributed run: the live state dicts every rank loads its shards into."""
    model = getattr(runner.model, "module", runner.model)
    state = model.state_dict()
    if distributed.world_size() == 1 or not sharded.is_sharded(state):
        return None
    optimizer = getattr(getattr(runner, "optim_wrapper", None), "optimizer", None)
    return {MAIN: {"state_dict": state, **({} if optimizer is None else {"optimizer": sharded.template(optimizer)})}}


CheckpointHook.__module__ = "trainer_ckpt.mmengine"
