"""
A plain fvcore loop (scripts/plain_loop.py's model, data and optimizer; detectron2's style: one
`PeriodicCheckpointer.step` per iteration) that saves on SIGTERM / SIGUSR1, for
tests/test_preemption_fvcore.py. One process, or one rank of a gloo group (`--rank`, `--init`:
the model in DistributedDataParallel, rank 0 writes the checkpoints).

    python tests/preempt_fvcore_loop.py OUT [--pause-at N] [--background] [--max-host-memory B]
                                            [--keep-training] [--user-handler] [--rank R --init URL]

`--pause-at N` (on `--pause-rank`): after iteration N's optimizer step the process prints
"paused N" and waits for a line on stdin; the test sends the signal meanwhile, so it arrives at a
known iteration. `--user-handler` installs a SIGTERM/SIGUSR1 handler before the checkpointer that
appends the signal's number to OUT/user_handler.log. Each process notes where it starts training
(tests/_resume.py); checkpoint messages go to stderr.
"""
import argparse
import logging
import os
import random
import signal
import sys
from pathlib import Path

import numpy
import torch
import torch.distributed as dist
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.plain_loop import dataset  # noqa: E402
from tests._resume import note_start  # noqa: E402
from trainer_ckpt.data import ResumableLoader  # noqa: E402
from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer  # noqa: E402

MAX_ITER = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--pause-at", type=int, default=-1)
    parser.add_argument("--pause-rank", type=int, default=0)
    parser.add_argument("--background", action="store_true")
    parser.add_argument("--max-host-memory", type=int, default=None)
    parser.add_argument("--keep-training", action="store_true", help="exit_on_signal=False")
    parser.add_argument("--user-handler", action="store_true")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--init", default=None, help="a gloo group of 2 ranks, e.g. file:///tmp/store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.init:
        dist.init_process_group("gloo", init_method=args.init, rank=args.rank, world_size=2)
    if args.user_handler:
        def user_handler(signum, frame):
            with open(os.path.join(args.out, "user_handler.log"), "a") as f:
                f.write(f"{signum}\n")

        signal.signal(signal.SIGTERM, user_handler)
        signal.signal(signal.SIGUSR1, user_handler)

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trained = nn.parallel.DistributedDataParallel(model) if args.init else model
    loader = ResumableLoader(dataset(), batch_size=16, shuffle=True, seed=0)
    checkpointer = Checkpointer(trained, args.out, save_to_disk=args.rank == 0, background=args.background,
                                max_host_memory=args.max_host_memory, optimizer=optimizer, loader=loader)
    periodic = PeriodicCheckpointer(checkpointer, period=5, max_iter=MAX_ITER, max_to_keep=2,
                                    save_on_signals=["SIGTERM", "USR1"], exit_on_signal=not args.keep_training)
    start = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1

    def batches():
        while True:
            yield from loader

    data = batches()
    note_start(args.out, start, rank=args.rank)
    for iteration in range(start, MAX_ITER):
        x, y = next(data)
        loss = nn.functional.cross_entropy(trained(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration == args.pause_at and args.rank == args.pause_rank:
            print(f"paused {iteration}", flush=True)
            sys.stdin.readline()
        periodic.step(iteration)
    print("finished", flush=True)
    if args.init:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
