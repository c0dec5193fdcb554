"""
An ignite training run for tests/test_preemption_ignite.py: scripts/ignite_loop.py's (a real
`Engine`, a small MLP with dropout, Adam, a shuffled `ResumableLoader`, 13 iterations an epoch, a
checkpoint every 5 iterations, keep 2) plus a `StepLR` stepped at EPOCH_COMPLETED and
trainer_ckpt's `save_on_signals`.

    python tests/preempt_ignite_run.py OUT --signals SIGTERM,SIGUSR1 --wait-at 23
    python tests/preempt_ignite_run.py OUT --signals SIGTERM --rank R --world-size 2 --init-method file:///tmp/x

`--wait-at N`: after iteration N, prints "waiting at N" and waits until a signal arrives; the
signal handlers this script installs (before the Checkpoint, as a user's) note each signal in
OUT/user_handler.txt. Every save prints "saved at I". A run that ends writes OUT/final.pth; it
resumes from OUT's newest checkpoint, and notes where it started in OUT/starts.jsonl (tests/_resume.py).
With `--world-size 2`, each rank trains the model wrapped in DistributedDataParallel (gloo) on the
same batches: the averaged gradients are each rank's own, so the run matches a single process's.
"""
import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.plain_loop import dataset  # noqa: E402
from tests._resume import note_start  # noqa: E402
from trainer_ckpt.data import ResumableLoader  # noqa: E402

EPOCHS = 4  # 52 iterations


def train(out: str, signals=(), exit_on_signal: bool = True, background: bool = False, wait_at: int = 0,
          rank: int = 0, world_size: int = 1, init_method: str = "") -> None:
    import torch.distributed as dist
    from ignite.engine import Engine, Events
    from ignite.handlers.checkpoint import CheckpointEvents

    from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint

    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
        model = nn.parallel.DistributedDataParallel(model)

    def step(engine, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    trainer.register_events(*CheckpointEvents)
    loader = ResumableLoader(dataset(), batch_size=16, shuffle=True, seed=0)
    to_save = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer": trainer, "loader": loader}
    if wait_at:
        received = []

        def user_handler(signum, frame):
            received.append(signum)
            with open(os.path.join(out, "user_handler.txt"), "a") as f:
                f.write(f"{signum}\n")

        for name in signals:
            signal.signal(getattr(signal, name), user_handler)

        def wait(engine):
            print(f"waiting at {engine.state.iteration}", flush=True)
            deadline = time.monotonic() + 60
            while not received:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no signal came at iteration {engine.state.iteration}")
                time.sleep(0.01)

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=wait_at), wait)
    handler = Checkpoint(to_save, DiskSaver(out, require_empty=False, background=background), n_saved=2,
                         save_on_signals=list(signals) or None, exit_on_signal=exit_on_signal)
    noted = []

    def note_first(engine):  # ignite counts an iteration before ITERATION_STARTED: 23 are done when it is 24
        if not noted:
            noted.append(True)
            note_start(out, engine.state.iteration - 1, rank)

    trainer.add_event_handler(Events.ITERATION_STARTED, note_first)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), handler)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: scheduler.step())
    trainer.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT, lambda e: print(f"saved at {e.state.iteration}", flush=True))
    path = latest_checkpoint(out)
    if path is not None:
        Checkpoint.load_objects(to_save, path)
    trainer.run(loader, max_epochs=EPOCHS)
    if rank == 0:
        final = {"model": getattr(model, "module", model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "iteration": trainer.state.iteration}
        torch.save(final, os.path.join(out, "final.pth"))
    if world_size > 1:
        dist.destroy_process_group()


def final_state(out: str) -> dict:
    return torch.load(os.path.join(out, "final.pth"), weights_only=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--signals", default="", help="comma-separated names, e.g. SIGTERM,SIGUSR1")
    parser.add_argument("--no-exit", action="store_true", help="exit_on_signal=False")
    parser.add_argument("--background", action="store_true")
    parser.add_argument("--wait-at", type=int, default=0)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--init-method", default="")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train(args.out, signals=[s for s in args.signals.split(",") if s], exit_on_signal=not args.no_exit,
          background=args.background, wait_at=args.wait_at, rank=args.rank, world_size=args.world_size,
          init_method=args.init_method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
