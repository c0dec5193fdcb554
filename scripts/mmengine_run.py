"""
A small mmengine training run (a real `Runner`: a toy classifier with dropout, SGD with momentum,
a MultiStepLR schedule, a shuffled `DefaultSampler`, an accuracy metric), checkpointed every epoch
by trainer_ckpt.mmengine's `CheckpointHook` or, for comparison, by mmengine's own: one name differs.

    .venv/bin/python scripts/mmengine_run.py runs/mm                       # trains 4 epochs
    .venv/bin/python scripts/mmengine_run.py runs/mm --kill-at 20          # SIGKILLs itself after iteration 20
    .venv/bin/python scripts/mmengine_run.py runs/mm --resume              # Runner(resume=True): goes on
    .venv/bin/python scripts/mmengine_run.py runs/mm --peer                # mmengine's own CheckpointHook

`--no-val` leaves out the validation loop (with it, our hook puts the random state back after
validation, whose loader draws from it, so a resumed run is exact too; mmengine's own hook is not:
tests/test_mmengine_stateful_loader.py). The final model and optimizer
state go to `final.pt` in the work dir; every Runner notes the iterations done when it starts its
first one in `starts.jsonl` there (0, or its checkpoint's: 16 for epoch_2.pth; tests/_resume.py).
"""
import argparse
import os
import signal
import sys
import uuid
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._resume import note_start  # noqa: E402


def _classes():
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel

    class ToyModel(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))

        def forward(self, inputs, labels, mode="tensor"):
            out = self.net(torch.stack(inputs) if isinstance(inputs, list) else inputs)
            labels = torch.stack(labels) if isinstance(labels, list) else labels
            if mode == "loss":
                return {"loss": nn.functional.cross_entropy(out, labels)}
            return out if mode == "tensor" else [dict(pred=o.argmax(), label=l) for o, l in zip(out, labels)]

    class Accuracy(BaseMetric):
        def process(self, data_batch, data_samples) -> None:
            self.results.extend(float(s["pred"] == s["label"]) for s in data_samples)

        def compute_metrics(self, results):
            return dict(acc=sum(results) / len(results))

    return ToyModel, Accuracy


def start_probe():
    """A hook that notes `runner.iter` (iterations done) right before the first iteration this
    Runner trains, after any resume, in `starts.jsonl` in the work dir (on every rank)."""
    from mmengine.dist import get_rank
    from mmengine.hooks import Hook

    class StartProbe(Hook):
        noted = False

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            if not self.noted:
                self.noted = True
                note_start(runner.work_dir, runner.iter, rank=get_rank())

    return StartProbe


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return dict(inputs=self.x[i], labels=self.y[i])


def build_runner(work_dir: str, hook: dict, max_epochs: int = 4, resume: bool = False, val: bool = True,
                 custom_hooks=(), **kwargs):
    """A Runner with `default_hooks=dict(checkpoint=hook)`: 8 iterations an epoch; `start_probe` among its hooks."""
    from mmengine.runner import Runner

    ToyModel, Accuracy = _classes()
    loader = dict(dataset=ToyData(), sampler=dict(type="DefaultSampler", shuffle=True), batch_size=8, num_workers=0)
    evaluation = dict(val_dataloader=loader, val_evaluator=dict(type=Accuracy), val_cfg=dict()) if val else {}
    return Runner(
        model=dict(type=ToyModel), work_dir=work_dir, train_dataloader=loader,  # built after seeding
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9)),
        param_scheduler=dict(type="MultiStepLR", milestones=[2]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        default_hooks=dict(checkpoint=hook), randomness=dict(seed=0), resume=resume, default_scope=None,
        log_level="WARNING", experiment_name=f"toy-{uuid.uuid4().hex[:12]}",
        custom_hooks=[dict(type=start_probe()), *custom_hooks], **evaluation, **kwargs,
    )  # a unique experiment name: runners of one process and second would share a message hub


def hook_type(peer: bool):
    if peer:
        from mmengine.hooks import CheckpointHook
    else:
        from trainer_ckpt.mmengine import CheckpointHook
    return CheckpointHook


def train(work_dir: str, peer: bool = False, kill_at: int = -1, resume: bool = False, val: bool = True,
          max_epochs: int = 4, **hook_kwargs) -> None:
    from mmengine.hooks import Hook

    class Kill(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if runner.iter + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    hook = dict(type=hook_type(peer), interval=1, **hook_kwargs)
    runner = build_runner(work_dir, hook, max_epochs=max_epochs, resume=resume, val=val, custom_hooks=[dict(type=Kill)])
    runner.train()
    model = runner.model
    final = {"model": model.state_dict(), "optimizer": runner.optim_wrapper.state_dict(), "iter": runner.iter}
    torch.save(final, os.path.join(work_dir, "final.pt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--peer", action="store_true", help="mmengine's own CheckpointHook, for comparison")
    parser.add_argument("--kill-at", type=int, default=-1, help="SIGKILL after this iteration (1-based)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-val", action="store_true")
    args = parser.parse_args()
    train(args.work_dir, peer=args.peer, kill_at=args.kill_at, resume=args.resume, val=not args.no_val)
    return 0


if __name__ == "__main__":
    sys.exit(main())
