"""
torchdata's `StatefulDataLoader` in the ignite face's `to_save`: a run killed at an epoch's end
and twice within the next epoch (SIGKILL right after a committed checkpoint), resumed each time,
takes the very batches an uninterrupted run takes, from the iteration after its checkpoint, and
ends with the same weights and Adam state, bit for bit (shuffle, augmentation drawing from torch,
`random` and numpy in `__getitem__`, dropout; `num_workers` 0 saving synchronously, 2 in the
background). The runs are tests/ignite_stateful_run.py's.
"""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.plain_loop import max_difference
from tests import ignite_stateful_run as script
from tests._resume import assert_starts

ITERATIONS = 24  # 3 epochs of 8
KILLS = (8, 11, 14)  # the first epoch's end (its iterator exhausted, not yet ended), then twice within the second


def run(out: Path, workers: int, background: bool, kill_at: int = -1) -> int:
    """One process of the script; its output goes to a file, not a pipe (a killed run's workers
    may outlive it by a few seconds, holding a pipe open)."""
    out.mkdir(exist_ok=True)
    command = [sys.executable, script.__file__, str(out), "--workers", str(workers), "--kill-at", str(kill_at)]
    with open(out / "log.txt", "a") as log:
        return subprocess.run(command + (["--background"] if background else []),
                              stdout=log, stderr=subprocess.STDOUT, timeout=240).returncode


def batches(out: Path):
    """[(iteration, x, y)] in the order the runs in `out` trained them."""
    return [(e["iteration"], e["x"], e["y"]) for e in map(json.loads, (out / "batches.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("workers, background", [(0, False), (2, True)], ids=["0-workers", "2-workers-background"])
def test_sigkills_at_an_epoch_end_and_twice_in_one_epoch_resume_exactly(tmp_path, workers, background):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    script.train(str(whole), workers, kill_at=-1)  # uninterrupted, in this process (saving synchronously)
    for kill_at in KILLS:
        assert run(killed, workers, background, kill_at) == -signal.SIGKILL, (killed / "log.txt").read_text()
    assert run(killed, workers, background) == 0, (killed / "log.txt").read_text()

    assert_starts(killed, 0, *KILLS)
    assert [b[0] for b in batches(killed)] == [b[0] for b in batches(whole)] == list(range(1, ITERATIONS + 1))
    expected, got = (torch.load(d / "final.pt", weights_only=True) for d in (whole, killed))
    print(f"num_workers={workers}, background={background}: max abs diff {max_difference(got, expected)}")
    differ = [i for (i, *ours), (_, *theirs) in zip(batches(killed), batches(whole)) if ours != theirs]
    assert not differ, f"the batches of iterations {differ} differ from the uninterrupted run's"
    for key in ("model", "optimizer"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
