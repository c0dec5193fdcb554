"""
Where the data is, in a checkpoint: torchdata's `StatefulDataLoader` is the loader every face
resumes exactly (see `trainer_ckpt.core.loaders`); `ResumableLoader`, 0.1's own loader, is now
one of them, made with a seed.
"""
import functools
import warnings
from typing import Any, Dict, Tuple

import torch

from trainer_ckpt.core import loaders

_OWNED = {"sampler", "batch_sampler", "shuffle", "generator"}


def ResumableLoader(dataset: Any, batch_size: int = 1, shuffle: bool = True, seed: int = 0, **loader_kwargs: Any) -> Any:
    """
    A torchdata `StatefulDataLoader` whose order comes from `seed` alone (a generator of its
    own: the global random state is not drawn from), ready to resume exactly, workers included.
    Kept for 0.1's scripts: a `StatefulDataLoader(dataset, ..., generator=...)` of your own
    does the same in every face (which `prepare`s it: `trainer_ckpt.core.loaders`). Needs torchdata (`pip install trainer-ckpt[data]`).

    # Parameters

    dataset : `Dataset`
    batch_size : `int`, optional (default=`1`)
    shuffle : `bool`, optional (default=`True`)
    seed : `int`, optional (default=`0`)
    **loader_kwargs
        Passed on to `StatefulDataLoader` (`collate_fn`, `num_workers`, `drop_last`, ...), but
        `sampler`, `batch_sampler`, `shuffle` and `generator`, which this function owns.
    """
    owned = sorted(_OWNED & set(loader_kwargs))
    if owned:
        raise ValueError(
            f"ResumableLoader: {', '.join(owned)} cannot be passed on, got {owned}. "
            "The loader owns the order of the data; use `shuffle` and `seed`."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"ResumableLoader: `batch_size` must be an integer >= 1, got {batch_size!r}. Pass e.g. 32.")
    StatefulDataLoader, RandomSampler = _loader_class()
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else None
    return loaders.prepare(StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                              generator=torch.Generator().manual_seed(seed + 1), **loader_kwargs))


@functools.lru_cache(maxsize=None)
def _loader_class() -> Tuple[type, type]:
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
        from torchdata.stateful_dataloader.sampler import RandomSampler
    except ImportError as e:
        raise ImportError(
            "ResumableLoader: torchdata is not installed, got an ImportError. Install it with "
            "`pip install trainer-ckpt[data]`."
        ) from e

    class _ResumableLoader(StatefulDataLoader):
        """StatefulDataLoader, which refuses 0.1's positions with a warning."""

        def load_state_dict(self, state: Dict[str, Any]) -> None:
            if isinstance(state, dict) and set(state) == {"epoch", "batches", "seed"}:
                warnings.warn(
                    f"ResumableLoader: a position saved by trainer_ckpt 0.1 (epoch {state['epoch']}, batch "
                    f"{state['batches']}), which 0.2's loader cannot go on from: the data order starts afresh.",
                    stacklevel=2,
                )
                return
            super().load_state_dict(state)

    _ResumableLoader.__name__ = _ResumableLoader.__qualname__ = "ResumableLoader"
    return _ResumableLoader, RandomSampler
