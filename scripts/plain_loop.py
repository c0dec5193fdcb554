"""
A plain PyTorch training loop (detectron2's style: iterations, PeriodicCheckpointer), checkpointed
by trainer_ckpt.fvcore or, for comparison, by fvcore's own classes: one import differs.

    .venv/bin/python scripts/plain_loop.py runs/loop                    # trains 60 iterations
    .venv/bin/python scripts/plain_loop.py runs/loop --kill-at 37       # SIGKILLs itself after iteration 37
    .venv/bin/python scripts/plain_loop.py runs/loop                    # resumes from iteration 34's checkpoint
    .venv/bin/python scripts/plain_loop.py --compare                    # both checkpointers, killed and resumed,
                                                                        # against an uninterrupted run

A small MLP with dropout, Adam, a checkpoint every 5 iterations (keep 2), and torchdata's
`StatefulDataLoader` (shuffled; a random augmentation in `__getitem__` drawing from torch, random
and numpy) as a checkpointable. `--workers 2` loads in two worker processes, `--kill-at 16,22`
kills at each once, in turn (several resumes in one run directory).
`--device cuda` trains on the GPU, `--background` saves in the background (trainer_ckpt only).
Each run notes the iteration it starts training at in `starts.jsonl` in the output directory
(0, or the one after its checkpoint's; tests/_resume.py).
`--compare` prints, for each checkpointer, the largest difference between the final weights and
optimizer state of the interrupted-and-resumed run and those of an uninterrupted run.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._resume import note_start  # noqa: E402


def dataset(n: int = 200):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


class Augmented(torch.utils.data.Dataset):
    """`dataset()` with random noise on each item, from torch, random and numpy (drawn in the
    process that loads it: a worker's own random state with `num_workers > 0`)."""

    def __init__(self, n: int = 200) -> None:
        self.items = dataset(n)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x, y = self.items[i]
        return x + 0.1 * torch.randn(8) + 0.01 * random.random() + 0.01 * float(numpy.random.rand()), y


def loader(workers: int = 0):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(Augmented(), batch_size=16, shuffle=True, num_workers=workers)


def train(out: str, max_iter: int = 60, kill_at: str = "", peer: bool = False, device: str = "cpu",
          background: bool = False, workers: int = 0) -> None:
    if peer:
        from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer
    else:
        from trainer_ckpt.fvcore import Checkpointer, PeriodicCheckpointer
    os.makedirs(out, exist_ok=True)  # fvcore does not make it
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data_loader = loader(workers)
    options = {"background": True} if background else {}
    checkpointer = Checkpointer(model, out, optimizer=optimizer, loader=data_loader, **options)
    periodic = PeriodicCheckpointer(checkpointer, period=5, max_iter=max_iter, max_to_keep=2)
    start = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1

    def batches():
        while True:
            yield from data_loader

    data = batches()
    note_start(out, start)  # iterations already done: model_0000034's run starts at 35
    kill = next((k for k in (int(k) for k in kill_at.split(",") if k) if not os.path.exists(os.path.join(out, f"killed-{k}"))), -1)
    for iteration in range(start, max_iter):
        x, y = (t.to(device) for t in next(data))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        periodic.step(iteration)
        if iteration == kill:
            open(os.path.join(out, f"killed-{kill}"), "w").close()  # once: the resumed run goes past it
            os.kill(os.getpid(), signal.SIGKILL)


def final_state(out: str) -> dict:
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference over every tensor of model and optimizer state."""
    worst = 0.0
    for key in ("model", "optimizer"):
        x, y = a[key], b[key]
        pairs = [(x[k], y[k]) for k in x] if key == "model" else [
            (x["state"][p][s], y["state"][p][s]) for p in x["state"] for s in x["state"][p]
        ]
        for t, u in pairs:
            worst = max(worst, (t.double() - u.double()).abs().max().item())
    return worst


def run(out: str, kill_at: str = "", peer: bool = False, device: str = "cpu", background: bool = False, workers: int = 0) -> int:
    command = [sys.executable, __file__, out, "--kill-at", str(kill_at), "--device", device, "--workers", str(workers)]
    command += (["--peer"] if peer else []) + (["--background"] if background else [])
    return subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}).returncode


def compare(kill_at: int = 37) -> dict:
    """{checkpointer: max difference after SIGKILL at `kill_at` + resume vs uninterrupted}."""
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for peer in (False, True):
            full, cut = os.path.join(root, f"full{peer}"), os.path.join(root, f"cut{peer}")
            assert run(full, peer=peer) == 0
            assert run(cut, kill_at=kill_at, peer=peer) == -signal.SIGKILL
            assert run(cut, peer=peer) == 0
            results["fvcore" if peer else "trainer_ckpt.fvcore"] = max_difference(final_state(full), final_state(cut))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--kill-at", default="", help="iterations to SIGKILL after, comma-separated: each once, in turn")
    parser.add_argument("--workers", type=int, default=0, help="the loader's worker processes")
    parser.add_argument("--peer", action="store_true", help="fvcore's own Checkpointer, for comparison")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the model trains (cuda: the CUDA paths)")
    parser.add_argument("--background", action="store_true", help="trainer_ckpt's background saves")
    args = parser.parse_args()
    if args.compare:
        for name, diff in compare().items():
            print(f"{name:20s} SIGKILL after iteration 37, resumed: max |final - uninterrupted| = {diff:.3g}")
        return 0
    train(args.out, kill_at=args.kill_at, peer=args.peer, device=args.device, background=args.background, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
