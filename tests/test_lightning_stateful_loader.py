"""
The Lightning face with torchdata's `StatefulDataLoader`: killed twice within one epoch and resumed
each time with `fit(ckpt_path="last")`, a run trains every batch as one never interrupted and ends
with bit-identical weights, with `num_workers` 0 and 2 (shuffle, augmentation drawing from torch,
python and numpy in `__getitem__`, dropout, Adam), also with a generator of its own, and with
`trainer_ckpt.data.ResumableLoader`.
Resumed from the checkpoint saved after an epoch's last batch, a run goes on with the next epoch
exactly, a stateful loader's (Lightning alone skips that epoch) and a plain `DataLoader`'s. Every
run validates at each epoch's end on a shuffled loader of the augmenting dataset (the validation
after that checkpoint, which the resumed run does not redo, draws from the random state).
The runs: tests/lightning_stateful_loop.py.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tests.conftest import ROOT
from trainer_ckpt.core import loaders
from trainer_ckpt.lightning import ModelCheckpoint

from tests.lightning_stateful_loop import runs as runs_of

# KIND-WORKERS-KILLS (see the script): two kills in the first epoch; after the first epoch's last batch (step 8)
CASES = ["stateful-0-3.6", "stateful-2-3.6", "seeded-0-3.6", "seeded-2-3.6", "resumable-0-3.6", "resumable-2-3.6",
         "stateful-2-8.11", "plain-0-8"]
STEPS = 16  # two epochs of 8 batches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case's four runs, in one process that forks each (Lightning is imported once)."""
    out = tmp_path_factory.mktemp("lightning_stateful")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "lightning_stateful_loop.py"), str(out), *CASES],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})  # one thread: fast under load
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "status.json") as f:
        return out, json.load(f)


@pytest.mark.parametrize("case", CASES)
def test_each_resumed_run_starts_at_its_checkpoint_and_the_last_ends_bit_identical(runs, case):
    out, status = runs
    tags = list(runs_of(case))  # straight, killed1, ..., end
    assert [status[f"{case}.{tag}"] for tag in tags] == [0] + [-9] * (len(tags) - 2) + [0]
    straight = torch.load(out / f"{case}.straight.pt", weights_only=True)
    assert straight["global_step"] == STEPS
    expected = torch.load(out / f"{case}.straight.batches.pt", weights_only=True)
    assert sorted(expected) == list(range(STEPS))
    # killed1 trained steps 0 to its kill step - 1; each next run resumed at the step the one before died in
    bounds = [0] + [runs_of(case)[tag] for tag in tags[1:-1]] + [STEPS]
    for tag, first, stop in zip(tags[1:], bounds, bounds[1:]):
        batches = torch.load(out / f"{case}.{tag}.batches.pt", weights_only=True)
        assert sorted(batches) == list(range(first, stop)), tag
        for step in range(first, stop):  # the same samples, the same augmentation: the loader's position and its workers' draws
            torch.testing.assert_close(batches[step], expected[step], rtol=0, atol=0, msg=f"{tag}, step {step}")
    resumed = torch.load(out / f"{case}.end.pt", weights_only=True)
    assert resumed["global_step"] == STEPS
    assert sorted(resumed["weights"]) == sorted(straight["weights"])
    for name, weight in straight["weights"].items():
        assert torch.equal(resumed["weights"][name], weight), name


def test_a_stateful_loader_given_to_fit_carries_each_workers_random_state_in_the_checkpoint(tmp_path):
    """`fit(model, train_dataloaders=loader)`: the face prepares the loader (its workers' random state
    is saved with Lightning's loop state), and gives the loop its own method back after `fit`."""
    loader = StatefulDataLoader(RandomDataset(32, 16), batch_size=4, num_workers=2)
    callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer = Trainer(max_steps=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(BoringModel(), train_dataloaders=loader)
    checkpoint = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=True)
    state, = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    workers = state["_snapshot"]["_worker_snapshots"]
    assert sorted(workers) == ["worker_0", "worker_1"]
    for worker in workers.values():
        assert sorted(worker["dataset_state"][loaders.WORKER_RANDOM]) == ["numpy", "python", "torch"]
    assert "_load_combined_loader_states" not in vars(trainer.fit_loop)


@pytest.mark.parametrize("face", ["ours", "lightning"])
def test_lightnings_checkpoint_after_an_epochs_last_batch_resumes_with_the_next_epoch_with_ours(tmp_path, face):
    """A checkpoint Lightning's own callback saved after the first epoch's last batch (a stateful
    loader, 4 batches an epoch), resumed for a second epoch: with ours, the run trains its 4
    batches; with Lightning's callback alone it trains none (the loader's iterator, put back at
    the first epoch's end, is the one Lightning goes on with)."""
    def fit(callback, max_epochs, ckpt_path=None):
        trainer = Trainer(max_epochs=max_epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
                          enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
        trainer.fit(BoringModel(), train_dataloaders=StatefulDataLoader(RandomDataset(32, 16), batch_size=4),
                    ckpt_path=ckpt_path)
        return trainer

    fit(LightningModelCheckpoint(dirpath=tmp_path / "first", every_n_train_steps=4, save_top_k=-1), 1)
    assert os.listdir(tmp_path / "first") == ["epoch=0-step=4.ckpt"]
    callback = (ModelCheckpoint if face == "ours" else LightningModelCheckpoint)(dirpath=tmp_path / "second")
    trainer = fit(callback, 2, ckpt_path=tmp_path / "first" / "epoch=0-step=4.ckpt")
    assert trainer.global_step == (8 if face == "ours" else 4)
