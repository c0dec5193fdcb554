"""
trainer_ckpt.core.loaders, on its own: torchdata's StatefulDataLoader (shuffle, a random
augmentation in `__getitem__` from torch, random and numpy) stopped mid-epoch and resumed in a new
loader goes on with the very batches an uninterrupted loader hands out, with 0 and 2 workers
(forked; a spawned worker's pickled dataset too), across the next epoch, as every face does it: `prepare` when the loader is
given, `restore` before the random state goes back. Without either step it differs (the controls).
"""
import pickle
import random
import warnings

import numpy
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from trainer_ckpt.core import loaders
from trainer_ckpt.core.rng import capture_rng, restore_rng


class Augmented(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.tensor([float(i)]) + torch.rand(1) + random.random() + float(numpy.random.rand())


class Counted(Augmented):
    """A dataset with a state of its own (torchdata's `Stateful`)."""

    def __init__(self):
        self.seen = 0

    def __getitem__(self, i):
        self.seen += 1
        return super().__getitem__(i)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def seed(n):
    torch.manual_seed(n), random.seed(n), numpy.random.seed(n)


def batches_after_a_resume(workers, context=None, prepare=True, prime=True, dataset=Augmented, generator=False):
    """(what an uninterrupted loader hands out after batch 2 of 6, through the next epoch; what a
    new loader resumed there hands out). The main process draws too, as a model's dropout would."""
    def make():
        loader = StatefulDataLoader(dataset(), batch_size=4, shuffle=True, num_workers=workers,
                                    multiprocessing_context=context if workers else None,
                                    generator=torch.Generator().manual_seed(3) if generator else None)
        return loaders.prepare(loader) if prepare else loader

    seed(0)
    loader, expected = make(), []
    for epoch in range(2):
        for i, batch in enumerate(loader):
            expected.append(batch + torch.rand(1))
            if epoch == 0 and i == 1:
                saved = (loader.state_dict(), capture_rng())
    seed(0)
    loader = make()
    seed(99)  # whatever the new process did in between
    if prime:
        loaders.restore(loader, saved[0])
    else:
        loader.load_state_dict(saved[0])
    restore_rng(saved[1])
    got = [batch + torch.rand(1) for epoch in range(2) for batch in loader]
    return expected[2:], got


def largest_difference(expected, got):
    assert len(expected) == len(got) == 10
    return max((a - b).abs().max().item() for a, b in zip(expected, got))


@pytest.mark.parametrize("workers, context, generator", [(0, None, False), (2, "fork", False), (2, "fork", True)],
                         ids=["no workers", "2 forked", "2 forked, a generator of its own"])
def test_a_resumed_loader_hands_out_the_same_batches(workers, context, generator):
    """With a generator of its own, the loader draws the workers' base seed of the next epoch from it."""
    expected, got = batches_after_a_resume(workers, context, generator=generator)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_a_prepared_dataset_pickles_for_spawned_workers():
    """Spawned workers get the dataset pickled (here, the same round trip, 25 s faster)."""
    dataset = loaders.prepare(StatefulDataLoader(Counted(), batch_size=4, num_workers=2)).dataset
    dataset.seen = 3
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.state_dict() == {"dataset": {"seen": 3}} and copy.state_dict.carrier.dataset is copy
    copy.load_state_dict({"dataset": {"seen": 4}})
    assert copy.seen == 4 and dataset.seen == 3


def test_without_the_iterator_made_first_the_main_process_draws_shift():
    assert largest_difference(*batches_after_a_resume(0, prime=False)) > 0.01


@pytest.mark.parametrize("generator", [False, True], ids=["global", "a generator of its own"])
def test_without_prepare_the_workers_augment_differently(generator):
    assert largest_difference(*batches_after_a_resume(2, "fork", prepare=False, generator=generator)) > 0.01


def test_a_dataset_with_a_state_of_its_own_keeps_it():
    expected, got = batches_after_a_resume(2, "fork", dataset=Counted)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    loader = loaders.prepare(loaders.prepare(StatefulDataLoader(Counted(), batch_size=4)))  # twice: once
    loader.dataset.seen = 5
    assert loader.dataset.state_dict() == {"dataset": {"seen": 5}}  # the main process's random state is the checkpoint's
    loader.dataset.load_state_dict({"dataset": {"seen": 7}})
    assert loader.dataset.seen == 7


def test_a_list_dataset_cannot_carry_the_workers_random_state_and_says_so():
    def ours(caught):
        return [str(w.message) for w in caught if str(w.message).startswith("StatefulDataLoader:")]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaders.prepare(StatefulDataLoader(list(range(8)), batch_size=4))
        assert ours(caught) == []  # no workers: the main process's random state is the checkpoint's
        loaders.prepare(StatefulDataLoader(list(range(8)), batch_size=4, num_workers=2))
    assert ours(caught) == [
        "StatefulDataLoader: its dataset (a list) cannot carry its workers' random state, so randomness in the "
        "workers resumes differently. Wrap it in a torch Dataset."]


def test_is_stateful_knows_the_loader_without_importing_torchdata():
    assert loaders.is_stateful(StatefulDataLoader(Augmented()))
    assert not loaders.is_stateful(torch.utils.data.DataLoader(Augmented()))
