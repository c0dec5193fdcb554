"""
Every patch of mmengine the face needs, in one place: installed once, at import, and routed per
thread, never swapped per call (so runners on two threads never see each other's hook).

- `mmengine.runner.runner.save_checkpoint` (what `Runner.save_checkpoint` writes with): mmengine's,
  unless this thread is inside one of our hook's saves (`ROUTE.save`): then the hook's, which
  writes through the engine.
- `open` in `mmengine.hooks.checkpoint_hook` (its module global, looked up before the builtin):
  the builtin, except mmengine's in-place write of `last_checkpoint` within our saves (a kill
  there leaves it empty), which goes to /dev/null: ours was written atomically after the commit.
- A `CheckpointLoader` scheme, `trainer_ckpt://{path}`: `Runner.resume` loads through it the
  checkpoint our hook already found, verified and loaded (`hand_over`).

And, within one save of our hook only (context managers, undone on exit):
- `routing_saves(save)`: this thread's `save_checkpoint` calls go to `save` (`ROUTE.save`);
- `skipping_pointer_write(path)`: mmengine's in-place write of `last_checkpoint` goes nowhere;
- `deferring_removals(hook, pending)`: the hook's `file_backend.remove` (mmengine's retention)
  waits in `pending` until the new checkpoint is committed;
- `on_every_rank(runner)`: `Runner.save_checkpoint` without its `@master_only`, for sharded state,
  which every rank writes.

And, on resume, until the iteration-based loop has skipped the data already trained:
- `after_skipping(loop, then)`: calls `then` right after the loop's last skipping step.

And an `IterBasedTrainLoop`'s data iterator (mmengine's `_InfiniteDataloaderIterator`), for a
StatefulDataLoader: `remake_iterator(loop)`, `passes(loop)` (its count of passes over the data),
and `positioned(loop, restore, passes)` (on resume: the loader where the checkpoint left it, the
loop's skipping of the batches already trained a no-op).
"""
import contextlib
import os
import threading
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Sequence

import mmengine.hooks.checkpoint_hook as _hook_module
import mmengine.runner.runner as _runner_module
from mmengine.runner.checkpoint import CheckpointLoader

SCHEME = "trainer_ckpt://"
ROUTE = threading.local()  # .save: the hook's save function; .pointer: the `last_checkpoint` not to rewrite
_LOADED: Dict[str, list] = {}  # path -> [the checkpoint before_run loaded (or None once taken), safe_globals]
_LOADED_LOCK = threading.Lock()
_mmengine_save_checkpoint = getattr(_runner_module.save_checkpoint, "__trainer_ckpt_original__", _runner_module.save_checkpoint)
_load: Callable[[str, Sequence[Any]], Any] = lambda path, safe_globals: None  # set by `install`


def _save_checkpoint(*args: Any, **kwargs: Any) -> Any:
    return (getattr(ROUTE, "save", None) or _mmengine_save_checkpoint)(*args, **kwargs)


def _open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    pointer = getattr(ROUTE, "pointer", None)
    if pointer is not None and "w" in mode and os.path.abspath(str(file)) == pointer:
        file = os.devnull
    return open(file, mode, *args, **kwargs)


def hand_over(path: str, checkpoint: Any, safe_globals: Sequence[Any]) -> str:
    """Keeps `checkpoint` (loaded from `path`) for `Runner.resume`; returns the name it loads it by."""
    with _LOADED_LOCK:
        _LOADED[path] = [checkpoint, safe_globals]
    return SCHEME + path


def _load_from_trainer_ckpt(filename: str, map_location: Any = None) -> Any:
    path = filename[len(SCHEME):]
    with _LOADED_LOCK:
        loaded = _LOADED.get(path, [None, ()])
        checkpoint, loaded[0] = loaded[0], None
    return checkpoint if checkpoint is not None else _load(path, loaded[1])


def install(load: Callable[[str, Sequence[Any]], Any]) -> None:
    """Installs the patches (again: the same functions); `load(path, safe_globals)` reads a checkpoint not handed over."""
    global _load
    _load = load
    _save_checkpoint.__trainer_ckpt_original__ = _mmengine_save_checkpoint  # type: ignore[attr-defined]
    _runner_module.save_checkpoint = _save_checkpoint
    _hook_module.open = _open
    CheckpointLoader.register_scheme(SCHEME, _load_from_trainer_ckpt, force=True)


@contextlib.contextmanager
def _routing(name: str, value: Any) -> Iterator[None]:
    """This thread's `ROUTE.{name}` is `value` within; what it was after."""
    previous = getattr(ROUTE, name, None)
    setattr(ROUTE, name, value)
    try:
        yield
    finally:
        setattr(ROUTE, name, previous)


def routing_saves(save: Callable[..., Any]) -> ContextManager[None]:
    return _routing("save", save)


def skipping_pointer_write(pointer: str) -> ContextManager[None]:
    return _routing("pointer", os.path.abspath(pointer))


class _DeferRemoval:
    """A file backend whose `remove` waits until the checkpoint being saved is committed."""

    def __init__(self, backend: Any, pending: List[str]) -> None:
        self._backend, self._pending = backend, pending

    def remove(self, path: str) -> None:
        self._pending.append(str(path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@contextlib.contextmanager
def deferring_removals(hook: Any, pending: List[str]) -> Iterator[None]:
    backend, hook.file_backend = hook.file_backend, _DeferRemoval(hook.file_backend, pending)
    try:
        yield
    finally:
        hook.file_backend = backend


@contextlib.contextmanager
def on_every_rank(runner: Any) -> Iterator[None]:
    runner.save_checkpoint = type(runner).save_checkpoint.__wrapped__.__get__(runner)
    try:
        yield
    finally:
        del runner.save_checkpoint


class _Skipping:
    """An `IterBasedTrainLoop`'s data iterator until it has given the `loop._iter` batches the
    loop skips on resume (loaded, or with `load=False` none: `None`s): then it puts the loop's
    own back and calls `then`."""

    def __init__(self, loop: Any, then: Callable[[], None], load: bool = True) -> None:
        self._loop, self._iterator, self._left, self._then = loop, loop.dataloader_iterator, loop._iter, then
        self._load = load

    def __iter__(self) -> "_Skipping":
        return self

    def __next__(self) -> Any:
        batch = next(self._iterator) if self._load else None
        self._left -= 1
        if self._left == 0:
            self._loop.dataloader_iterator = self._iterator
            self._then()
        return batch


def after_skipping(loop: Any, then: Callable[[], None]) -> None:
    """
    Calls `then` once a resumed `IterBasedTrainLoop` has skipped the `loop._iter` batches already
    trained (at once when there are none). Skipping past the end of the data starts a new pass
    over it, and a new DataLoader iterator draws its base seed from the global random state: the
    random state a checkpoint saved must go back after those draws, which the uninterrupted run
    made before it saved.
    """
    if loop._iter > 0:
        loop.dataloader_iterator = _Skipping(loop, then)
    else:
        then()


def remake_iterator(loop: Any) -> None:
    """Makes an `IterBasedTrainLoop`'s iterator over its StatefulDataLoader again (mmengine made it
    with the loop, before the face prepared the loader: its workers would not carry their random
    state). Loading an empty state drops the loader's iterator, whose workers it would otherwise
    keep with `persistent_workers=True`."""
    loop.dataloader.load_state_dict({})
    loop.dataloader_iterator._iterator = iter(loop.dataloader)


def passes(loop: Any) -> int:
    """How many times an `IterBasedTrainLoop` started its loader over (the epoch mmengine gives its sampler)."""
    return loop.dataloader_iterator._epoch


def positioned(loop: Any, restore: Callable[[], None], passes: int) -> None:
    """
    A resumed `IterBasedTrainLoop` whose loader `restore` puts where a checkpoint left it (a
    StatefulDataLoader, after `passes` passes over the data): the loop's iterator goes on from
    there, and the loop's skipping of the `loop._iter` batches already trained loads nothing.
    The sampler gets the epoch mmengine gave it at the start of that pass, before `restore`
    makes the iterator (a sampler that is not stateful is replayed up to its position).
    """
    iterator = loop.dataloader_iterator
    iterator._epoch = passes
    loader = loop.dataloader
    sampler = getattr(loader, "sampler", None)
    if not hasattr(sampler, "set_epoch"):
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if passes > 0 and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(passes)
    restore()
    iterator._iterator = iter(loader)  # the one `restore` made
    if loop._iter > 0:
        loop.dataloader_iterator = _Skipping(loop, lambda: None, load=False)
