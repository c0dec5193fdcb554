"""
An iteration-based mmengine run for tests/test_mmengine_stateful_loader.py: a real `Runner` (a toy
classifier with dropout, Adam, a random augmentation in the dataset's `__getitem__` drawing from
torch, python's `random` and numpy), with a real `ValLoop` every 5 iterations, checkpointed every
iteration by trainer_ckpt.mmengine's `CheckpointHook` (by_epoch=False). 40 samples, 4 a batch:
10 iterations a pass over the data, 14 in all. `--epochs`: an `EpochBasedTrainLoop` of 2 epochs
instead, validated and checkpointed at the end of each.

    .venv/bin/python tests/mmengine_stateful_run.py DIR --loader stateful --workers 2 --kill-at 5
    .venv/bin/python tests/mmengine_stateful_run.py DIR --loader stateful --workers 2 --resume

`--loader plain`: mmengine's own DataLoader from a config dict (a shuffled `DefaultSampler`);
`--loader stateful`: torchdata's `StatefulDataLoader(shuffle=True)` (`--persistent`: with
`persistent_workers=True`, as mmengine's configs often have it), built by the script and
given to the Runner as its `train_dataloader` (`--sampler default`: with mmengine's shuffled
`DefaultSampler`, which is not stateful: torchdata replays it, and mmengine sets its epoch at
each new pass). `--kill-at N`: SIGKILL after iteration N
(1-based), once its checkpoint is committed. `--background`: the hook's background saves. The final model and optimizer state go to
`final.pt`; every Runner notes where it starts in `starts.jsonl` (tests/_resume.py) and, in
`fetched.jsonl`, how many samples the main process had loaded by the end of its first iteration.
"""
import argparse
import json
import os
import random
import signal
import sys
import uuid
from pathlib import Path

import numpy
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.mmengine_run import ToyData, _classes, start_probe  # noqa: E402

MAX_ITERS, VAL_INTERVAL, BATCH, EPOCHS = 14, 5, 4, 2


class AugmentedData(torch.utils.data.Dataset):
    """40 samples; each load adds noise drawn from torch, python's `random` and numpy, and counts itself."""

    def __init__(self, n: int = 40) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
        self.y = (self.x.sum(1) > 0).long()
        self.fetched = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.fetched += 1
        noise = 0.1 * torch.rand(4) + 0.1 * random.random() + 0.1 * float(numpy.random.rand())
        return dict(inputs=self.x[i] + noise, labels=self.y[i])


def train(work_dir: str, loader: str = "plain", workers: int = 0, kill_at: int = -1, resume: bool = False,
          sampler: str = "shuffle", epochs: bool = False, background: bool = False, persistent: bool = False) -> None:
    """Trains (or resumes) to MAX_ITERS; `final.pt` holds the model, the optimizer and `iter`."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from trainer_ckpt.mmengine import CheckpointHook

    dataset = AugmentedData()

    class Kill(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.iter + 1 == kill_at:  # this hook runs last: the checkpoint of this iteration is saved
                next(h for h in runner.hooks if isinstance(h, CheckpointHook)).drain()  # and committed
                os.kill(os.getpid(), signal.SIGKILL)

    class Fetched(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if not getattr(self, "noted", False):
                self.noted = True
                with open(os.path.join(runner.work_dir, "fetched.jsonl"), "a") as f:
                    fetched = runner.train_dataloader.dataset.fetched  # the Runner's copy of a config's dataset
                    f.write(json.dumps({"done": runner.iter, "fetched": fetched}) + "\n")

    if loader == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        torch.manual_seed(0)  # its sampler draws its generator's seed when built, before the Runner seeds
        if sampler == "default":
            from mmengine.dataset import DefaultSampler

            order = dict(sampler=DefaultSampler(dataset, shuffle=True, seed=0))
        else:
            order = dict(shuffle=True)
        train_loader = StatefulDataLoader(dataset, batch_size=BATCH, num_workers=workers,
                                          persistent_workers=persistent, **order)
    else:
        train_loader = dict(dataset=dataset, sampler=dict(type="DefaultSampler", shuffle=True), batch_size=BATCH,
                            num_workers=workers)
    ToyModel, Accuracy = _classes()
    val_loader = dict(dataset=ToyData(16), sampler=dict(type="DefaultSampler", shuffle=False), batch_size=8)
    runner = Runner(
        model=dict(type=ToyModel), work_dir=work_dir, train_dataloader=train_loader,
        optim_wrapper=dict(optimizer=dict(type="Adam", lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=EPOCHS) if epochs else dict(by_epoch=False, max_iters=MAX_ITERS,
                                                                              val_interval=VAL_INTERVAL),
        val_dataloader=val_loader, val_evaluator=dict(type=Accuracy), val_cfg=dict(),
        default_hooks=dict(checkpoint=dict(type=CheckpointHook, by_epoch=epochs, interval=1, max_keep_ckpts=2,
                                           background=background)),
        randomness=dict(seed=0), resume=resume, default_scope=None, log_level="ERROR",
        experiment_name=f"stateful-{uuid.uuid4().hex[:12]}",  # runners of one process and second would share a message hub
        custom_hooks=[dict(type=start_probe()), dict(type=Fetched), dict(type=Kill, priority="LOWEST")],
    )
    runner.train()
    final = {"model": runner.model.state_dict(), "optimizer": runner.optim_wrapper.state_dict(), "iter": runner.iter}
    torch.save(final, os.path.join(work_dir, "final.pt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--loader", choices=["plain", "stateful"], default="plain")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kill-at", type=int, default=-1, help="SIGKILL after this iteration (1-based)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sampler", choices=["shuffle", "default"], default="shuffle", help="the StatefulDataLoader's")
    parser.add_argument("--epochs", action="store_true", help="an epoch-based loop")
    parser.add_argument("--background", action="store_true", help="the hook's background saves")
    parser.add_argument("--persistent", action="store_true", help="the StatefulDataLoader's persistent_workers")
    args = parser.parse_args()
    train(args.work_dir, args.loader, args.workers, args.kill_at, args.resume, args.sampler, args.epochs, args.background,
          args.persistent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
