"""
trainer_ckpt.mmengine resumed exactly in real Runners, across validation and with torchdata's
`StatefulDataLoader` as the runner's train loader: SIGKILLed runs (a process of their own, which
kills itself once the checkpoint it was told to reach is committed) resumed to the end match an
uninterrupted run with a max abs diff of 0 over the model and Adam's state, and start where
their checkpoint left off.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from scripts.plain_loop import max_difference
from tests._resume import assert_starts, resumed
from tests.mmengine_stateful_run import BATCH, MAX_ITERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(script, work_dir, *args):
    command = [sys.executable, os.path.join(ROOT, script), str(work_dir), *args]
    return subprocess.Popen(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def killed(process):
    """Waits for `process`, which must have SIGKILLed itself."""
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err.decode()[-3000:]


def final(work_dir):
    return torch.load(work_dir / "final.pt", weights_only=True)


def newest(work_dir):
    return (work_dir / "last_checkpoint").read_text()


def test_a_run_with_validation_resumes_bit_exact(tmp_path):
    """scripts/mmengine_run.py with its ValLoop after every epoch (its loader draws from the global
    random state after each epoch's checkpoint): SIGKILL mid-epoch 3, resume from epoch 2's end."""
    from scripts.mmengine_run import train

    cut = start("scripts/mmengine_run.py", tmp_path / "cut", "--kill-at", "20")
    train(str(tmp_path / "full"))  # meanwhile
    killed(cut)
    assert newest(tmp_path / "cut") == str(tmp_path / "cut" / "epoch_2.pth")
    with resumed(tmp_path / "cut", at=16):  # 8 iterations an epoch
        train(str(tmp_path / "cut"), resume=True)
    full, cut = final(tmp_path / "full"), final(tmp_path / "cut")
    assert full["iter"] == cut["iter"] == 32
    assert max_difference(full, cut) == 0.0


@pytest.mark.parametrize("loader, workers, extra", [("plain", 0, {}), ("stateful", 0, {}),
                                                    ("stateful", 2, {"persistent": True, "background": True})],
                         ids=["plain-0", "stateful-0", "stateful-2-persistent-background"])
def test_two_resumes_within_one_pass_are_bit_exact(tmp_path, loader, workers, extra):
    """tests/mmengine_stateful_run.py (10 iterations a pass, validation every 5, a checkpoint
    every iteration): SIGKILL after iteration 5 (before that validation), resume, SIGKILL after
    iteration 8 (same pass), resume to 14 (into the second pass). With a StatefulDataLoader the
    resumed runs load no batch before their first: the loader is put back where it was, and
    mmengine's skipping of the batches already trained loads nothing. With 2 workers:
    persistent workers (mmengine made them before the hook could prepare the loader), and saves
    in the background (the loader's state in the snapshot)."""
    from tests.mmengine_stateful_run import train

    options = ["--loader", loader, "--workers", str(workers)] + [f"--{option}" for option in extra]
    cut = tmp_path / "cut"
    first = start("tests/mmengine_stateful_run.py", cut, *options, "--kill-at", "5")
    train(str(tmp_path / "full"), loader, workers, **extra)  # meanwhile
    killed(first)
    assert newest(cut) == str(cut / "iter_5.pth")
    with resumed(cut, at=5):
        killed(start("tests/mmengine_stateful_run.py", cut, *options, "--kill-at", "8", "--resume"))
    assert newest(cut) == str(cut / "iter_8.pth")
    with resumed(cut, at=8):
        train(str(cut), loader, workers, resume=True, **extra)
    assert_starts(cut, 0, 5, 8)
    full, resumed_twice = final(tmp_path / "full"), final(cut)
    assert full["iter"] == resumed_twice["iter"] == MAX_ITERS
    assert max_difference(full, resumed_twice) == 0.0
    if workers == 0:  # samples this process loaded by the end of its first iteration
        fetched = [json.loads(line) for line in (cut / "fetched.jsonl").read_text().splitlines()]
        skipped = (lambda done: 0) if loader == "stateful" else (lambda done: done)  # mmengine loads what it skips
        assert fetched == [{"done": done, "fetched": (skipped(done) + 1) * BATCH} for done in (0, 5, 8)]


def test_a_sampler_that_is_not_stateful_resumes_bit_exact_in_a_later_pass(tmp_path):
    """A StatefulDataLoader with mmengine's DefaultSampler (shuffled by seed + epoch; torchdata
    replays it up to its position): SIGKILL after iteration 12, in the second pass over the
    data, whose order is the sampler's epoch 1."""
    from tests.mmengine_stateful_run import train

    cut = start("tests/mmengine_stateful_run.py", tmp_path / "cut", "--loader", "stateful", "--sampler", "default",
                "--kill-at", "12")
    train(str(tmp_path / "full"), "stateful", sampler="default")  # meanwhile
    killed(cut)
    assert newest(tmp_path / "cut") == str(tmp_path / "cut" / "iter_12.pth")
    with resumed(tmp_path / "cut", at=12):
        train(str(tmp_path / "cut"), "stateful", sampler="default", resume=True)
    full, cut = final(tmp_path / "full"), final(tmp_path / "cut")
    assert full["iter"] == cut["iter"] == MAX_ITERS
    assert max_difference(full, cut) == 0.0


def test_an_epoch_based_loop_with_a_stateful_loader_and_workers_resumes_bit_exact(tmp_path):
    """tests/mmengine_stateful_run.py --epochs (a checkpoint, then validation, at each epoch's end)
    with a StatefulDataLoader and 2 workers: SIGKILL mid-epoch 2, resume from epoch 1's end."""
    from tests.mmengine_stateful_run import train

    options = dict(loader="stateful", workers=2, epochs=True)
    cut = start("tests/mmengine_stateful_run.py", tmp_path / "cut", "--loader", "stateful", "--workers", "2", "--epochs",
                "--kill-at", "15")
    train(str(tmp_path / "full"), **options)  # meanwhile
    killed(cut)
    assert newest(tmp_path / "cut") == str(tmp_path / "cut" / "epoch_1.pth")
    with resumed(tmp_path / "cut", at=10):  # 10 iterations an epoch
        train(str(tmp_path / "cut"), resume=True, **options)
    full, cut = final(tmp_path / "full"), final(tmp_path / "cut")
    assert full["iter"] == cut["iter"] == 20
    assert max_difference(full, cut) == 0.0
