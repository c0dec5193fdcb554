"""
An iteration-based mmengine run for tests/test_preemption_mmengine.py: a real `Runner`
(scripts/mmengine_run.py's toy classifier with dropout, SGD with momentum, a shuffled
`DefaultSampler`; here an `IterBasedTrainLoop` of 24 iterations, 8 a pass over the data, and an
iteration-based MultiStepLR), checkpointed by trainer_ckpt.mmengine's `CheckpointHook` with
by_epoch=False, interval=10.

    .venv/bin/python tests/preempt_mmengine_run.py DIR --hook '{"save_on_signals": ["SIGTERM"]}' --wait-at 13

`--wait-at N`: after iteration N (1-based), before the checkpoint hook's turn, prints "at N" and
waits for a line on stdin: the test sends its signal in between. The process installs its own
handler for SIGTERM and SIGUSR1 before the Runner is built (a user's: it appends the signal's
number to `user_handler.txt`), to which ours must chain. The final model and optimizer state go
to `final.pt`; every Runner notes where it starts in `starts.jsonl` (tests/_resume.py).

`--rank R --world-size 2 --init FILE`: one rank of a 2-process gloo group (file:// init), the
model in mmengine's DistributedDataParallel on the CPU (rank 0 writes `final.pt`).
"""
import argparse
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.mmengine_run import ToyData, _classes, start_probe  # noqa: E402

MAX_ITERS, INTERVAL = 24, 10


def build_runner(work_dir: str, hook: dict, resume: bool = False, custom_hooks=(), **kwargs):
    from mmengine.runner import Runner

    from trainer_ckpt.mmengine import CheckpointHook

    ToyModel, _ = _classes()
    loader = dict(dataset=ToyData(), sampler=dict(type="DefaultSampler", shuffle=True), batch_size=8, num_workers=0)
    return Runner(
        model=dict(type=ToyModel), work_dir=work_dir, train_dataloader=loader,
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9)),
        param_scheduler=dict(type="MultiStepLR", by_epoch=False, milestones=[12]),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        default_hooks=dict(checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=INTERVAL, **hook)),
        randomness=dict(seed=0), resume=resume, default_scope=None, log_level="WARNING",
        experiment_name=f"preempt-{uuid.uuid4().hex[:12]}",  # runners of one process and second would share a message hub
        custom_hooks=[dict(type=start_probe()), *custom_hooks], **kwargs,
    )


def train(work_dir: str, hook: dict, resume: bool = False, wait_at: int = -1, **kwargs):
    """Trains (or resumes) to MAX_ITERS; returns the runner. `final.pt` holds the model, the optimizer and `iter`."""
    from mmengine.hooks import Hook

    class WaitForSignal(Hook):
        priority = "NORMAL"  # before the checkpoint hook (VERY_LOW) at the same iteration

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.iter + 1 == wait_at:
                print(f"at {wait_at}", flush=True)
                sys.stdin.readline()

    runner = build_runner(work_dir, hook, resume=resume, custom_hooks=[dict(type=WaitForSignal)], **kwargs)
    runner.train()
    if runner.rank != 0:
        return runner
    final = {"model": runner.model.state_dict(), "optimizer": runner.optim_wrapper.state_dict(), "iter": runner.iter}
    torch.save(final, os.path.join(work_dir, "final.pt"))
    return runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--hook", default="{}", help="the CheckpointHook's keywords, as JSON")
    parser.add_argument("--wait-at", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--init", help="the file of the gloo group's file:// init")
    args = parser.parse_args()
    distributed = {}
    if args.world_size > 1:
        import torch.distributed as dist

        os.environ.update(RANK=str(args.rank), LOCAL_RANK=str(args.rank), WORLD_SIZE=str(args.world_size))
        dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank, world_size=args.world_size)
        wrapper = dict(type="MMDistributedDataParallel", device_ids=None)  # a CPU model: no device ids
        distributed = dict(launcher="pytorch", cfg=dict(model_wrapper_cfg=wrapper))
    os.makedirs(args.work_dir, exist_ok=True)
    marker = os.path.join(args.work_dir, "user_handler.txt")

    def users_handler(signum, frame):
        with open(marker, "a") as f:
            f.write(f"{signum}\n")

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, users_handler)
    train(args.work_dir, json.loads(args.hook), resume=args.resume, wait_at=args.wait_at, **distributed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
