"""
One rank of a 2-process gloo group on the CPU: a real Lightning Trainer with
`ModelParallelStrategy` (Lightning's FSDP2), a model `fully_shard`ed in `configure_model`, Adam,
and our `ModelCheckpoint`. `python tests/lightning_fsdp_rank.py SCENARIO RANK DIR PORT`, run by
tests/test_lightning_sharded.py; `FSDP_BACKGROUND=1` builds the callback with `background=True`.
"""
import os
import sys

rank, directory, port = int(sys.argv[2]), sys.argv[3], sys.argv[4]
# The test starts both processes: Lightning's environment reads who is who from these.
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK="0",
                  LOCAL_RANK=str(rank), GLOBAL_RANK=str(rank))

import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests._resume import note_start  # noqa: E402
from trainer_ckpt.lightning import ModelCheckpoint  # noqa: E402

BACKGROUND = os.environ.get("FSDP_BACKGROUND") == "1"


class Sharded(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def data():
    """4 batches an epoch on each rank, in order (Lightning gives each rank its half)."""
    batches = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    return torch.utils.data.DataLoader(batches, batch_size=4, shuffle=False)


class Start(pl.Callback):
    """Notes the global step each fit starts training at (in DIR/starts, for the test: tests/_resume.py)."""

    def __init__(self, note):
        self.note = note

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        if self.note:
            note_start(os.path.join(directory, "starts"), trainer.global_step, rank=rank)


def fit(max_steps, *callbacks, ckpt_path=None):
    """A new model, fitted to `max_steps`; returns it and the step its training started at."""
    model, start = Sharded(), Start(note=bool(callbacks))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                         max_steps=max_steps, callbacks=[start, *callbacks], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(callbacks))
    trainer.fit(model, data(), ckpt_path=ckpt_path)
    return model, start.step


def full_state(model):
    """Every parameter and Adam moment, whole (gathered from both ranks)."""
    optimizer = model.trainer.strategy.optimizers[0]
    state = {f"param.{name}": p.full_tensor() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        for key, value in optimizer.state[p].items():
            state[f"adam.{name}.{key}"] = value.full_tensor() if hasattr(value, "full_tensor") else value
    return state


def resume():
    """Stopped after step 4 (saves at 2 and 4), resumed with `fit(ckpt_path="last")`: it starts at
    step 4 and ends at step 8 bit-identical to an uninterrupted run of 8 steps; so does a run
    resumed from the step-4 checkpoint by its path."""
    reference, started = fit(8)
    assert started == 0, started
    expected = full_state(reference)

    checkpoints = lambda: ModelCheckpoint(dirpath=os.path.join(directory, "ckpt"), every_n_train_steps=2, save_top_k=2,
                                          monitor="step", mode="max", background=BACKGROUND)
    _, started = fit(4, checkpoints())
    assert started == 0, started
    model, started = fit(8, checkpoints(), ckpt_path="last")
    assert started == 4, started
    same(full_state(model), expected)

    # A new run in another directory, from a path in this one (only read), at an epoch's end (within an
    # epoch Lightning restarts a plain DataLoader from its first batch): it starts at step 4.
    other = ModelCheckpoint(dirpath=os.path.join(directory, "other"), every_n_train_steps=2, background=BACKGROUND)
    model, started = fit(8, other, ckpt_path=os.path.join(directory, "ckpt", "epoch=0-step=4.ckpt"))
    assert started == 4, started
    same(full_state(model), expected)
    print(f"rank {rank}: resume ok", flush=True)


def same(got, expected):
    assert got.keys() == expected.keys() and len(got) == 16, (got.keys(), expected.keys())
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


globals()[sys.argv[1]]()
