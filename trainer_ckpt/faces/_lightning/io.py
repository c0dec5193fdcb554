"""
The Lightning face's `CheckpointIO`: an implementation of Lightning's `CheckpointIO` plugin API on
the engine, for `Trainer(plugins=[CheckpointIO()])` (or `SingleDeviceStrategy(...,
checkpoint_io=CheckpointIO())`), so that every file Lightning saves through its strategy (the
callbacks' and a manual `trainer.save_checkpoint(path)`) is written durably with a record, and
verified against it when loaded. Lightning's API it relies on, all public: `save_checkpoint(checkpoint,
path, storage_options=None)`, `load_checkpoint(path, map_location=None, weights_only=None)` (the
strategy passes `weights_only` by keyword and no `map_location`), `remove_checkpoint(path)`,
`teardown()` (the strategy's, after every `fit`/`validate`/`test`/`predict`, also when it raised).
"""
import copyreg
import logging
import os
import pickle
import time
import types
from typing import Any, Dict, List, Optional, Sequence

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.plugins.io import CheckpointIO as _CheckpointIO
from lightning.pytorch.plugins.io import TorchCheckpointIO

from trainer_ckpt.faces.arguments import require_bools
from trainer_ckpt.checkpoint_info import CheckpointInfo
from trainer_ckpt.core.background import require_host_memory
from trainer_ckpt.core.engine import CheckpointSaveError, Engine
from trainer_ckpt.io import durable, loading
from trainer_ckpt.stores import NamedFiles, named

__all__ = ["CheckpointIO", "CorruptCheckpoint", "UnsafeCheckpoint", "LIGHTNING_TYPES", "IO_LAYOUT"]

logger = logging.getLogger("trainer_ckpt.lightning")
MAIN = named.MAIN
# Every file name Lightning may give (`.ckpt` from ModelCheckpoint, any other a user passes to
# `trainer.save_checkpoint`), but hidden ones: those are the records' and temp files' names.
IO_LAYOUT = named.one_file(("",))
# Lightning's own types that its checkpoints may hold beyond tensors and plain containers: an
# `AttributeDict` nested as an hparam value (Lightning writes the top level as a plain dict).
LIGHTNING_TYPES: List[Any] = [AttributeDict]
_WHERE = "trainer_ckpt.lightning.CheckpointIO"


class _Pickler(pickle.Pickler):
    """
    pickle's, but an `AttributeDict` is written as a call of the class with a plain dict: torch's
    `weights_only` loading fills only plain dicts item by item (it refuses a dict subclass even
    when the class is allowed), but calls an allowed class. Any unpickler reads it.
    """

    dispatch_table = {**copyreg.dispatch_table, AttributeDict: lambda d: (AttributeDict, (dict(d),))}


_PICKLING = types.ModuleType("trainer_ckpt_lightning_pickle")  # torch.save's `pickle_module`: pickle, with our Pickler
_PICKLING.__dict__.update({k: getattr(pickle, k) for k in ("dump", "dumps", "load", "loads", "Unpickler", "HIGHEST_PROTOCOL")})
_PICKLING.Pickler = _Pickler


class CorruptCheckpoint(loading.BadCheckpoint, RuntimeError):
    """A checkpoint file of ours whose bytes differ from its record (truncated or altered since it
    was saved); nothing in it was unpickled. A `RuntimeError`, as Lightning's own load of a torn
    file raises."""


class UnsafeCheckpoint(loading.UnsafeCheckpoint, pickle.UnpicklingError):
    """A checkpoint holds types `weights_only` loading refuses (nothing in it was run); an
    `UnpicklingError`, as Lightning's own load raises for it."""


class CheckpointIO(_CheckpointIO):
    """
    Lightning's `CheckpointIO` plugin on trainer_ckpt's engine: `Trainer(plugins=[CheckpointIO()])`.

    - Saves: every file is written through a temp file, fsync and rename (a crash leaves the old
      file or the complete new one), with a hidden record `.{file}.json` beside it (size, CRC32,
      epoch, global step). One engine (and the directory's writer lock) per directory, released at
      `teardown`. A hidden file name (`.x.ckpt`) gets no record: it is written durably alone.
    - Loads: a file with a record is checked against it before anything is unpickled; one whose
      bytes differ raises `CorruptCheckpoint` (a `RuntimeError`) naming the file and the mismatch.
      A file without a record (Lightning's own, a peer's), or that another writer replaced since
      ours was saved (a new inode, other bytes), loads as Lightning loads it. `weights_only` as Lightning passes
      it (None: torch's default, True), allowing Lightning's own types (`LIGHTNING_TYPES`) and yours
      (`safe_globals`); refused types raise `UnsafeCheckpoint` (a `pickle.UnpicklingError`). Ours
      writes an `AttributeDict` as a call of its class with a plain dict: torch's `weights_only`
      loading cannot fill a dict subclass, so Lightning's own files holding one load only with
      `weights_only=False`.
      Lightning's errors for its own cases: `FileNotFoundError` for a missing file.
    - Removes: the record first, then the file and its hidden random-state file; only a file name
      of the layout (never a directory, nor a hidden file).
    - URLs (`s3://...`): Lightning's own `TorchCheckpointIO` (no record there).

    background : `bool` (default `False`)
        The async variant: a save copies the checkpoint's tensors once, on the training thread
        (into buffers reused from save to save), and a worker thread writes it. At most one save is
        in flight: the next save, `load_checkpoint`, `remove_checkpoint` (Lightning's
        `ModelCheckpoint` deletes the file a new one replaces only once the new one is committed),
        `teardown` and `wait()` wait for it, and raise its error if it failed (once). A save made
        after the trainer's teardown (`trainer.save_checkpoint` after `fit`) is waited for by the
        next of those calls, or at process exit (a failure is logged at ERROR then).
    max_host_memory : `int` (default `None`)
        Bytes the background save's snapshot buffers may take; a checkpoint larger than that is
        written on the training thread instead (the loop blocks for the write, no more memory).
        None: no bound.
    safe_globals : `Sequence[type]` (default `()`)
        Your own types that may be unpickled from checkpoints you trust (`weights_only` loading).

    Picklable (a strategy's plugins are, e.g. for `ddp_spawn`): a copy carries the settings, not the
    engines (each holds a directory's lock and a worker thread); it opens its own when it saves.
    """

    def __init__(self, background: bool = False, safe_globals: Sequence[Any] = (), max_host_memory: Optional[int] = None) -> None:
        require_bools(_WHERE, background=background)
        require_host_memory(_WHERE, max_host_memory)
        super().__init__()
        self.background, self.max_host_memory = background, max_host_memory
        self.safe_globals = list(safe_globals)
        self._engines: Dict[str, Engine] = {}

    # ---- saving ----------------------------------------------------------------------------

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:  # TorchCheckpointIO's error, word for word
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`. Please implement your custom `CheckpointIO`"
                " to define how you'd like to use `storage_options`."
            )
        self.wait()  # at most one save in flight; an earlier one's failure is raised here
        path = str(path)
        if "://" in path:
            return TorchCheckpointIO().save_checkpoint(checkpoint, path)
        directory, name = os.path.split(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)  # Lightning's errors (a parent that is a file...), as TorchCheckpointIO's
        if IO_LAYOUT.parse(name) is None:  # a hidden name: no record could be told from ours
            path = os.path.join(directory, name)
            tmp, _ = durable.save_temp(checkpoint, path, pickle_module=_PICKLING)
            durable.commit([(tmp, path)])
            return
        epoch, step = checkpoint.get("epoch", 0), checkpoint.get("global_step", 0)
        epoch, step = (int(v) if isinstance(v, int) else 0 for v in (epoch, step))
        info = CheckpointInfo(epoch, 0, time=time.time(), total_batches_completed=step)
        record = {"writer": _WHERE, "epoch": epoch, "global_step": step}
        if "pytorch-lightning_version" in checkpoint:
            record["lightning"] = str(checkpoint["pytorch-lightning_version"])
        self._engine(directory).save(name, {MAIN: checkpoint}, info, record=record)

    def _engine(self, directory: str) -> Engine:
        engine = self._engines.get(directory)
        if engine is None:
            try:
                engine = Engine(NamedFiles(directory, IO_LAYOUT), background=self.background, safe_globals=self.safe_globals,
                                max_host_memory=self.max_host_memory,
                                where=_WHERE, trust_hint="pass those types in `CheckpointIO(safe_globals=[...])`.",
                                save_kwargs={"pickle_module": _PICKLING})
            except ValueError as e:  # the lock file could not be made: an OSError, as Lightning's own save raises
                if isinstance(e.__cause__, OSError):
                    raise CheckpointSaveError(f"{_WHERE}: could not save into {directory}: {e}") from e.__cause__
                raise
            self._engines[directory] = engine
            engine.clean_up()  # temp files of a crashed save of ours
        return engine

    def wait(self) -> None:
        """Waits for a background save in flight; raises its error if it failed (once)."""
        errors = []
        for engine in list(self._engines.values()):
            try:
                engine.wait()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # ---- loading ---------------------------------------------------------------------------

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        self.wait()  # a save in flight, of this very file perhaps
        path = str(path)
        if "://" in path:
            kwargs = {} if map_location is None else {"map_location": map_location}
            return TorchCheckpointIO().load_checkpoint(path, weights_only=weights_only, **kwargs)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")  # TorchCheckpointIO's
        real = os.path.realpath(path)  # a `last.ckpt` link (save_last="link"): its target's record
        expected = self._expected(real)
        if expected is not None:
            try:
                loading.verify(real, expected)
            except loading.BadCheckpoint as e:
                record = os.path.join(os.path.dirname(real), IO_LAYOUT.record(os.path.basename(real)))
                raise CorruptCheckpoint(
                    f"{_WHERE}: checkpoint {path} does not match its record {record}: {e}. It was truncated or "
                    "altered after it was saved; nothing in it was loaded. Resume from another checkpoint (with "
                    "trainer_ckpt.lightning.ModelCheckpoint, fit(ckpt_path=\"last\") takes the newest good one)."
                ) from e
        try:
            with loading.allowing(LIGHTNING_TYPES + self.safe_globals):
                # Lightning's own default map_location: every tensor where torch deserializes it (the CPU).
                return torch.load(real, map_location=map_location if map_location is not None else _as_saved,
                                  weights_only=weights_only)
        except pickle.UnpicklingError as e:
            refused = loading.refused_types(e)
            if refused is None:
                raise
            raise UnsafeCheckpoint(
                f"{_WHERE}: checkpoint {path} holds types that are not allowed to load, got: {refused}. Nothing in "
                "it was run. If you trust this file, pass those types in `CheckpointIO(safe_globals=[...])`, or "
                "load it with weights_only=False (e.g. trainer.fit(..., weights_only=False))."
            ) from e

    @staticmethod
    def _expected(path: str) -> Optional[Dict[str, Any]]:
        """The size and CRC32 (and inode) the record of `path` gives it; None for a peer's file (no record)."""
        directory, name = os.path.split(path)
        if IO_LAYOUT.parse(name) is None:
            return None
        record = NamedFiles(directory, IO_LAYOUT).entry(name).record  # {} without one (or unreadable, with a WARNING)
        return record.get("files", {}).get(MAIN)  # a file another writer put in its place since: see loading.verify

    # ---- removing, teardown ---------------------------------------------------------------

    def remove_checkpoint(self, path: Any) -> None:
        self.wait()  # the save that replaces this file is committed first; if it failed, nothing is removed
        path = str(path)
        if "://" in path:
            return TorchCheckpointIO().remove_checkpoint(path)
        directory, name = os.path.split(os.path.abspath(path))
        if IO_LAYOUT.parse(name) is None or (os.path.isdir(path) and not os.path.islink(path)):
            if os.path.lexists(path):
                logger.warning("%s: not removing %s: not a checkpoint file (a directory, or a hidden file)", _WHERE, path)
            return
        engine = self._engines.get(directory)
        store = engine.store if engine is not None else NamedFiles(directory, IO_LAYOUT)
        store.remove(name)  # the record first: a crash then leaves a file that loads as a peer's

    def teardown(self) -> None:
        """Waits for a save in flight and closes the engines (their locks go); raises a failed save's error."""
        try:
            self.wait()
        finally:
            for engine in list(self._engines.values()):
                engine.close()
            self._engines.clear()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_engines"] = {}  # each holds a directory's lock and a worker thread: not carried into a copy
        return state


def _as_saved(storage: Any, location: Any) -> Any:
    """TorchCheckpointIO's default `map_location` (a lambda there; a function here, which pickles)."""
    return storage


CheckpointIO.__module__ = "trainer_ckpt.lightning"
