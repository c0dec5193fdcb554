"""
A Lightning run for the preemption tests (tests/test_preemption_lightning.py), run in a process of
its own: dropout, a shuffled `trainer_ckpt.data.ResumableLoader`, Adam, 8 steps an epoch, 3
epochs, a checkpoint every 3 steps and `last`, `save_on_signals=[signal_name]`. A handler of the
user's own is installed for that signal before the callback is built; it notes the signal in
`{directory}.handler`.

`wait_in="train"` sends "waiting" on `report` in the training step at global step 10 (the second
epoch's third batch) and waits there until the test's signal has reached that handler;
`wait_in="validation"` does so in the first validation (after step 8). `resume` goes on with
fit(ckpt_path="last"). Writes the final weights, the optimizer's state, the global step of its
first batch and whether the user's handler is installed again to `{directory}.{tag}.pt`.

With `world_size=2` it is one rank (`rank`) of a DDP run on gloo (tcp://127.0.0.1:`port`), the
processes started by the test (Lightning's environment variables); only the last rank waits for
the signal, and rank 0 writes the file.
"""
import os
import signal
import sys
import time
from typing import Any, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

WAIT_AT = 10


def run(directory: str, tag: str, signal_name: str = "SIGTERM", wait_in: Optional[str] = None, background: bool = False,
        exit_on_signal: bool = True, resume: bool = False, report: Any = None, world_size: int = 1, rank: int = 0,
        port: int = 0) -> None:
    from trainer_ckpt.data import ResumableLoader
    from trainer_ckpt.lightning import ModelCheckpoint

    received = []

    def users_handler(number, frame):
        received.append(number)
        with open(f"{directory}.handler", "a") as f:
            f.write(f"{number}\n")

    def wait_for_the_signal(trainer):
        report.send(("waiting", trainer.global_step))
        deadline = time.monotonic() + 60
        while not received:
            if time.monotonic() > deadline:
                sys.exit("no signal came within 60 s")
            time.sleep(0.01)

    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.5)
            self.first_step = None

        def forward(self, x):
            return self.layer(self.dropout(x))

        def train_dataloader(self):
            data = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
            return ResumableLoader(list(data), batch_size=4, shuffle=True, seed=3)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

        def training_step(self, batch, batch_idx):
            if self.first_step is None:
                self.first_step = self.trainer.global_step
            if wait_in == "train" and self.trainer.global_step == WAIT_AT and rank == world_size - 1 and not received:
                wait_for_the_signal(self.trainer)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            if wait_in == "validation" and batch_idx == 0 and rank == world_size - 1 and not received:
                wait_for_the_signal(self.trainer)
            return super().validation_step(batch, batch_idx)

    ddp = {}
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), NODE_RANK="0",
                          RANK=str(rank), LOCAL_RANK=str(rank))
        ddp = dict(strategy="ddp", accelerator="cpu", devices=world_size,
                   use_distributed_sampler=False)  # each rank the whole data, 8 steps an epoch as in one process
    signum = getattr(signal, signal_name)
    signal.signal(signum, users_handler)
    torch.manual_seed(0)
    model = Model()
    callback = ModelCheckpoint(dirpath=directory, every_n_train_steps=3, save_top_k=-1, save_last=True, background=background,
                               save_on_signals=[signal_name], exit_on_signal=exit_on_signal)
    trainer = Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2, **ddp)
    trainer.fit(model, ckpt_path="last" if resume else None)
    if rank != 0:
        return
    torch.save({"weights": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict()["state"],
                "first_step": model.first_step, "handler_back": signal.getsignal(signum) is users_handler},
               f"{directory}.{tag}.pt")
