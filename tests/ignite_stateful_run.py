"""
An ignite training run for tests/test_ignite_stateful_loader.py: a real `Engine`, a small MLP with
dropout, Adam, and torchdata's `StatefulDataLoader` (shuffle, `num_workers` as given) over a dataset
whose `__getitem__` adds torch, `random` and numpy noise; the loader is in the Checkpoint's
`to_save`, and a checkpoint is saved after every iteration (keep 1). 8 iterations an epoch, 3 epochs.

    python tests/ignite_stateful_run.py OUT --workers 2 [--kill-at 11] [--background]

It resumes from the newest checkpoint in OUT/checkpoints when there is one, and notes where it
started in OUT/starts.jsonl (tests/_resume.py). Each iteration appends its number and its batch
to OUT/batches.jsonl. `--kill-at N`: SIGKILLs itself right after iteration N's checkpoint is
committed (`--background`: the saves are made in the background; it waits for that one). A run
that ends writes OUT/final.pt (the model's and the optimizer's state).
"""
import argparse
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._resume import note_start  # noqa: E402

EPOCHS = 3
BATCH = 4


class Noisy(torch.utils.data.Dataset):
    """32 samples of 4 features and a class; each read adds noise from torch, `random` and numpy."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 4, generator=generator)
        self.y = torch.randint(0, 2, (32,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = 0.1 * torch.rand(4) + random.random() + float(numpy.random.rand())
        return self.x[i] + noise, self.y[i]


def train(out: str, workers: int, kill_at: int, background: bool = False) -> None:
    from ignite.engine import Engine, Events
    from torchdata.stateful_dataloader import StatefulDataLoader

    from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = StatefulDataLoader(Noisy(), batch_size=BATCH, shuffle=True, num_workers=workers)

    def step(engine, batch):
        x, y = batch
        with open(os.path.join(out, "batches.jsonl"), "a") as f:
            f.write(json.dumps({"iteration": engine.state.iteration, "x": x.tolist(), "y": y.tolist()}) + "\n")
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trainer = Engine(step)
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer, "loader": loader}
    checkpoints = os.path.join(out, "checkpoints")
    saver = DiskSaver(checkpoints, require_empty=False, background=background)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, Checkpoint(to_save, saver, n_saved=1))

    @trainer.on(Events.ITERATION_COMPLETED)
    def kill(engine) -> None:  # after the checkpoint's handler
        if engine.state.iteration == kill_at:
            saver.wait()  # the save in the background committed
            os.kill(os.getpid(), signal.SIGKILL)

    noted = []

    @trainer.on(Events.ITERATION_STARTED)
    def note(engine) -> None:
        if not noted:
            noted.append(True)
            note_start(out, engine.state.iteration - 1)

    path = latest_checkpoint(checkpoints)
    if path is not None:
        Checkpoint.load_objects(to_load=to_save, checkpoint=path)
    trainer.run(loader, max_epochs=EPOCHS)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--background", action="store_true", help="saves in the background")
    args = parser.parse_args()
    train(args.out, args.workers, args.kill_at, args.background)
