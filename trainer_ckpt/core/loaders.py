"""
Data loaders whose position is part of a checkpoint: torchdata's `StatefulDataLoader`, exactly,
with workers and random augmentation. Framework-free: every face calls the two functions here.

A `StatefulDataLoader` saves its sampler's state and each worker's dataset state, but not the
random state inside the workers, and its iterator draws from the global random state when it is
made. So, resuming as it comes, a random augmentation differs after the resume, and the model's
own draws (dropout) shift by one. `prepare(loader)` makes the dataset carry its worker's random
state (in the worker only: the main process's random state is the checkpoint's own), and the
loader its own generator's, when it has one; `restore`
loads the loader's state and makes its iterator at once, before the face puts the checkpoint's
random state back. Nothing here imports torchdata.
"""
import warnings
from typing import Any, Dict, Optional

from trainer_ckpt.core.rng import capture_rng, restore_rng

WORKER_RANDOM = "trainer_ckpt_worker_random"  # the key of a worker's random state in its dataset's state
GENERATOR = "trainer_ckpt_generator"  # the key of the loader's generator's state in the loader's state
PREPARED, PENDING = "_trainer_ckpt_prepared", "_trainer_ckpt_generator_pending"


def is_stateful(loader: Any) -> bool:
    """Whether `loader` is a torchdata `StatefulDataLoader` (or a subclass), without importing torchdata."""
    return any(cls.__name__ == "StatefulDataLoader" and cls.__module__.startswith("torchdata.")
               for cls in type(loader).__mro__)


class _WorkerRandom:
    """A dataset's `state_dict`/`load_state_dict` that add its worker's random state (picklable, for spawned workers)."""

    def __init__(self, dataset: Any, own: Optional[Any], own_load: Optional[Any]) -> None:
        self.dataset, self.own, self.own_load = dataset, own, own_load

    def state_dict(self) -> Dict[str, Any]:
        from torch.utils.data import get_worker_info

        state = {"dataset": self.own()} if self.own is not None else {}
        if get_worker_info() is not None:
            state[WORKER_RANDOM] = capture_rng(cuda=False)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        from torch.utils.data import get_worker_info

        if self.own_load is not None and "dataset" in state:
            self.own_load(state["dataset"])
        if WORKER_RANDOM in state and get_worker_info() is not None:
            restore_rng(state[WORKER_RANDOM])


def prepare(loader: Any) -> Any:
    """
    Makes `loader`'s dataset carry its worker's random state in the loader's state (a dataset
    with its own `state_dict` keeps it, under "dataset"), and the loader's own `generator`, when
    it has one, its state (the sampler's state holds the generator's from the epoch's start, not
    the workers' base seed drawn after). Once per loader. Returns `loader`.
    """
    if getattr(loader, PREPARED, False):
        return loader
    _carry_worker_random(loader)
    if loader.generator is not None:
        own_state, own_load = loader.state_dict, loader.load_state_dict

        def state_dict() -> Dict[str, Any]:
            return {**own_state(), GENERATOR: loader.generator.get_state()}

        def load_state_dict(state: Dict[str, Any]) -> None:
            state = dict(state)
            setattr(loader, PENDING, state.pop(GENERATOR, None))
            own_load(state)

        own_iterator = loader._get_iterator  # DataLoader's: makes the iterator that `iter()` and `state_dict()` use

        def get_iterator() -> Any:
            iterator = own_iterator()  # drew the workers' base seed from the generator
            pending = getattr(loader, PENDING, None)
            if pending is not None:
                loader.generator.set_state(pending)  # where it was when saved
                setattr(loader, PENDING, None)
            return iterator

        loader.state_dict, loader.load_state_dict, loader._get_iterator = state_dict, load_state_dict, get_iterator
    setattr(loader, PREPARED, True)
    return loader


def _carry_worker_random(loader: Any) -> None:
    dataset = loader.dataset
    if isinstance(getattr(dataset, "state_dict", None), _Bound):
        return  # another loader over the same dataset did
    own = getattr(dataset, "state_dict", None), getattr(dataset, "load_state_dict", None)
    if (own[0] is None) != (own[1] is None):
        own = None, None  # not Stateful to torchdata: nothing of its own to keep
    carrier = _WorkerRandom(dataset, *own)
    try:
        dataset.state_dict, dataset.load_state_dict = _Bound(carrier, "state_dict"), _Bound(carrier, "load_state_dict")
    except (AttributeError, TypeError):  # a list, a class with __slots__: nothing random in a list's items
        if loader.num_workers > 0:
            warnings.warn(
                f"StatefulDataLoader: its dataset (a {type(dataset).__name__}) cannot carry its workers' random "
                "state, so randomness in the workers resumes differently. Wrap it in a torch Dataset.", stacklevel=3)


class _Bound:
    """`carrier.<name>` as a picklable callable: what `prepare` sets on a dataset."""

    def __init__(self, carrier: _WorkerRandom, name: str) -> None:
        self.carrier, self.name = carrier, name

    def __call__(self, *args: Any) -> Any:
        return getattr(self.carrier, self.name)(*args)


def restore(loader: Any, state: Dict[str, Any]) -> None:
    """Loads `loader`'s state and primes it (see `prime`): the face puts the checkpoint's random state back after."""
    loader.load_state_dict(state)
    prime(loader)


def prime(loader: Any) -> None:
    """
    Makes the iterator of a loader whose state was just loaded, now (its workers start): its
    draws from the global random state come before the face puts the checkpoint's random state
    back, which it must do after. The next `iter(loader)` returns that iterator.
    """
    if getattr(loader, "next_iter_state", None) is not None:
        loader.state_dict()
