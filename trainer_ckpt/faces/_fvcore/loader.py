"""
Resuming a plain loop's data order exactly: a DataLoader whose position is a checkpointable.
"""
from typing import Any, Dict, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


class ResumableLoader:
    """
    A `DataLoader` that knows where it is: give it to the checkpointer as a checkpointable
    (`Checkpointer(model, dir, optimizer=optimizer, loader=loader)`), and after
    `resume_or_load` it hands out the very batch the interrupted run would have trained next, in
    the same shuffled order, without loading the batches it skips.

    Epoch `e`'s order is a permutation drawn from `seed` and `e` alone, by a generator of its own;
    the global random state is not touched (a plain `DataLoader` draws its workers' base seed
    from it at every `iter()`, which a resumed run would do at another moment). Exact with
    `num_workers=0`; with workers, the order is exact, randomness inside the workers is not.

    # Parameters

    dataset : `Dataset`
    batch_size : `int`, optional (default=`1`)
    shuffle : `bool`, optional (default=`True`)
    seed : `int`, optional (default=`0`)
    **loader_kwargs
        Passed on to `DataLoader` (`collate_fn`, `num_workers`, `drop_last`, ...), but `sampler`,
        `batch_sampler`, `shuffle` and `generator`, which this class owns.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0, **loader_kwargs: Any) -> None:
        owned = {"sampler", "batch_sampler", "shuffle", "generator"} & set(loader_kwargs)
        if owned:
            raise ValueError(
                f"ResumableLoader: {', '.join(sorted(owned))} cannot be passed on, got {sorted(owned)}. "
                "The loader owns the order of the data; use `shuffle` and `seed`."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ResumableLoader: `batch_size` must be an integer >= 1, got {batch_size!r}. Pass e.g. 32.")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.loader_kwargs = loader_kwargs
        self.epoch = 0  # the epoch being handed out
        self.batches = 0  # batches of it handed out so far

    def __len__(self) -> int:
        n = len(self.dataset)  # type: ignore[arg-type]
        return n // self.batch_size if self.loader_kwargs.get("drop_last") else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        """The rest of the current epoch, from where the loader is; then the next epoch begins."""
        if self.batches >= len(self):  # all handed out, by a loop that stopped at its length (Lightning's)
            self.epoch, self.batches = self.epoch + 1, 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=order[self.batches * self.batch_size:],
            generator=generator, **self.loader_kwargs,
        )
        for batch in loader:
            self.batches += 1
            yield batch
        self.epoch, self.batches = self.epoch + 1, 0

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.batches, self.seed = int(state["epoch"]), int(state["batches"]), int(state["seed"])
