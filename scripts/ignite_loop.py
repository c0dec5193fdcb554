"""
An ignite training run (a real `Engine`, `Checkpoint` every 5 iterations, keep 2), checkpointed by
trainer_ckpt.ignite or, for comparison, by ignite's own classes: one import differs.

    .venv/bin/python scripts/ignite_loop.py runs/ig                  # trains 4 epochs (52 iterations)
    .venv/bin/python scripts/ignite_loop.py runs/ig --kill-at 37     # SIGKILLs itself after iteration 37
    .venv/bin/python scripts/ignite_loop.py runs/ig                  # resumes from iteration 35's checkpoint
    .venv/bin/python scripts/ignite_loop.py --compare                # both, killed and resumed, against
                                                                     # an uninterrupted run

A small MLP with dropout, Adam, shuffled data. Two set-ups: a plain `Engine` with trainer_ckpt's
`ResumableLoader` as a checkpointable (the default), and ignite's `DeterministicEngine` with a
plain shuffled `DataLoader` (`--deterministic`, ignite's own convention for resuming data order).
`--compare` prints the largest difference between the final weights and optimizer state of the
interrupted-and-resumed run and those of an uninterrupted run, for each checkpointer and set-up
(or that the resume failed: ignite's `load_objects` loads with `weights_only=True`, which refuses
the numpy random state in a DeterministicEngine's state). Each run notes the iterations done when
it trains its first one in `starts.jsonl` in the output directory (tests/_resume.py).
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

from scripts.plain_loop import dataset, max_difference  # noqa: E402
from tests._resume import note_start  # noqa: E402
from trainer_ckpt.data import ResumableLoader  # noqa: E402


def _newest_by_step(out: str):
    """What an ignite user writes to resume: the file with the highest step in its name."""
    files = sorted(Path(out).glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    return files[-1] if files else None


def _note_first_iteration(out: str):
    """A handler noting the iterations done when this process starts its first one (ignite's
    `state.iteration` counts from 1 and is already advanced then): checkpoint_35's run notes 35."""
    noted = []

    def note(engine) -> None:
        if not noted:
            noted.append(True)
            note_start(out, engine.state.iteration - 1)

    return note


def train(out: str, max_epochs: int = 4, kill_at: int = -1, peer: bool = False, deterministic: bool = False) -> None:
    from ignite.engine import DeterministicEngine, Engine, Events

    if peer:
        from ignite.handlers import Checkpoint, DiskSaver

        find = _newest_by_step
    else:
        from trainer_ckpt.ignite import Checkpoint, DiskSaver, latest_checkpoint as find
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step(engine, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = (DeterministicEngine if deterministic else Engine)(step)
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
    if deterministic:
        data = torch.utils.data.DataLoader(dataset(), batch_size=16, shuffle=True)
    else:
        data = to_save["loader"] = ResumableLoader(dataset(), batch_size=16, shuffle=True, seed=0)
    handler = Checkpoint(to_save, DiskSaver(out, require_empty=False), n_saved=2)
    trainer.add_event_handler(Events.ITERATION_STARTED, _note_first_iteration(out))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), handler)
    if kill_at >= 0:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), lambda _: os.kill(os.getpid(), signal.SIGKILL))
    path = find(out)
    if path is not None:
        Checkpoint.load_objects(to_save, path)
    trainer.run(data, max_epochs=max_epochs)
    final = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": trainer.state.iteration}
    torch.save(final, os.path.join(out, "final.pth"))


def final_state(out: str) -> dict:
    return torch.load(os.path.join(out, "final.pth"), weights_only=True)


def run(out: str, kill_at: int = -1, peer: bool = False, deterministic: bool = False, quiet: bool = False) -> int:
    command = [sys.executable, __file__, out, "--kill-at", str(kill_at)]
    command += (["--peer"] if peer else []) + (["--deterministic"] if deterministic else [])
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stderr=output).returncode


def compare(kill_at: int = 37) -> dict:
    """{(checkpointer, set-up): max difference after SIGKILL at `kill_at` + resume vs uninterrupted}."""
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for deterministic in (False, True):
            for peer in (False, True):
                tag = f"{int(peer)}{int(deterministic)}"
                full, cut = os.path.join(root, f"full{tag}"), os.path.join(root, f"cut{tag}")
                assert run(full, peer=peer, deterministic=deterministic) == 0
                assert run(cut, kill_at=kill_at, peer=peer, deterministic=deterministic) == -signal.SIGKILL
                resumed = run(cut, peer=peer, deterministic=deterministic, quiet=True) == 0
                name = "ignite" if peer else "trainer_ckpt.ignite"
                setup = "DeterministicEngine + DataLoader" if deterministic else "Engine + ResumableLoader"
                results[(name, setup)] = max_difference(final_state(full), final_state(cut)) if resumed else None
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--peer", action="store_true", help="ignite's own Checkpoint and DiskSaver, for comparison")
    parser.add_argument("--deterministic", action="store_true", help="DeterministicEngine and a plain DataLoader")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if args.compare:
        for (name, setup), diff in compare().items():
            outcome = "the resume fails to load its checkpoint" if diff is None else f"max |final - uninterrupted| = {diff:.3g}"
            print(f"{name:20s} {setup:33s} SIGKILL after iteration 37, resumed: {outcome}")
        return 0
    os.makedirs(args.out, exist_ok=True)
    train(args.out, kill_at=args.kill_at, peer=args.peer, deterministic=args.deterministic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
