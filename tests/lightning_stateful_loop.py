"""
Lightning runs for tests/test_lightning_stateful_loader.py: a loader from `train_dataloader()`,
shuffled, over a dataset that augments each sample with torch, python and numpy random draws;
dropout, Adam, a learning rate halved every epoch; `trainer_ckpt.lightning.ModelCheckpoint` saving
every step; two epochs of 8 steps, each validated at its end on two batches of a shuffled
`DataLoader` of the same dataset.

A CASE is KIND-WORKERS-KILLS: KIND `stateful` (torchdata's `StatefulDataLoader`), `seeded` (one
with a generator of its own), `resumable` (`trainer_ckpt.data.ResumableLoader`) or `plain`
(torch's `DataLoader`); WORKERS its `num_workers`; KILLS the global steps, dot-separated, after
which the interrupted runs die. Each run is a process
of its own, forked from this one once Lightning is imported (the import takes most of a run's
time): `straight` (never interrupted, its own directory); then, in one directory, `killed1` SIGKILLs
itself in the training step after the first kill step (that step's checkpoint is committed by
then: the saves are synchronous), each next `killedN` resumes with `fit(ckpt_path="last")` and
dies after the next one, and `end` resumes and runs to the end. Each run writes the batch of every
step it trained (as it goes: a killed run's too) to `OUT/CASE.TAG.batches.pt`; the runs that end
write their final weights to `OUT/CASE.TAG.pt`. `OUT/status.json`: each run's exit status as
`os.waitstatus_to_exitcode` gives it (-9: SIGKILL).

    python tests/lightning_stateful_loop.py OUT CASE...
"""
import json
import os
import random
import signal
import sys
import traceback

import numpy
import torch
from lightning.pytorch import LightningModule, Trainer
from torchdata.stateful_dataloader import StatefulDataLoader

from trainer_ckpt.data import ResumableLoader
from trainer_ckpt.lightning import ModelCheckpoint


class Augmented(torch.utils.data.Dataset):
    """16 fixed samples, each returned with noise from all three generators (a worker's own, with workers)."""

    def __init__(self):
        self.data = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i] + torch.rand(8) + random.random() + float(numpy.random.rand())


class Model(LightningModule):
    def __init__(self, kind, workers, kill_at, batches_file):
        super().__init__()
        self.kind, self.workers, self.kill_at, self.batches_file = kind, workers, kill_at, batches_file
        self.layer = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(8, 4), torch.nn.Dropout(0.3), torch.nn.Linear(4, 1))
        self.batches = {}

    def train_dataloader(self):
        if self.kind == "resumable":
            return ResumableLoader(Augmented(), batch_size=2, shuffle=True, seed=3, num_workers=self.workers)
        if self.kind == "seeded":  # the order from a generator of its own
            return StatefulDataLoader(Augmented(), batch_size=2, shuffle=True, num_workers=self.workers,
                                      generator=torch.Generator().manual_seed(3))
        if self.kind == "plain":
            return torch.utils.data.DataLoader(Augmented(), batch_size=2, shuffle=True, num_workers=self.workers)
        return StatefulDataLoader(Augmented(), batch_size=2, shuffle=True, num_workers=self.workers)

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step
        if self.kill_at and step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.batches[step] = batch.clone()
        torch.save(self.batches, self.batches_file)
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val", self.layer(batch).pow(2).mean())

    def val_dataloader(self):
        return torch.utils.data.DataLoader(Augmented(), batch_size=4, shuffle=True, num_workers=self.workers)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)  # stepped at each epoch's end
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def runs(case):
    """{tag: the global step it dies after (0: it does not)} of a case's runs, in order."""
    kills = [int(k) for k in case.split("-")[2].split(".")]
    return {"straight": 0, **{f"killed{i + 1}": k for i, k in enumerate(kills)}, "end": 0}


def run(out, case, tag):
    """One run (in a forked child): `fit`, resuming from `last` when its directory has checkpoints."""
    kind, workers, _ = case.split("-")
    directory = os.path.join(out, case + ("-straight" if tag == "straight" else ""))
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = Model(kind, int(workers), runs(case)[tag], os.path.join(out, f"{case}.{tag}.batches.pt"))
    callback = ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    resume = os.path.isdir(directory) and any(name.endswith(".ckpt") for name in os.listdir(directory))
    trainer.fit(model, ckpt_path="last" if resume else None)
    torch.save({"weights": model.state_dict(), "global_step": trainer.global_step}, os.path.join(out, f"{case}.{tag}.pt"))


def main(out, cases):
    status = {}
    for case in cases:
        for tag in runs(case):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    run(out, case, tag)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush(), sys.stderr.flush()
                    os._exit(code)
            status[f"{case}.{tag}"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with open(os.path.join(out, "status.json"), "w") as f:
        json.dump(status, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
