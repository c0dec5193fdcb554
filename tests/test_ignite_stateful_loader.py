"""
torchdata's `StatefulDataLoader` in the ignite face's `to_save`: a run killed twice within one
epoch (SIGKILL right after a committed checkpoint) and resumed each time takes the very batches an
uninterrupted run takes, from the iteration after its checkpoint, and ends with the same weights
and Adam state, bit for bit (shuffle, augmentation drawing from torch, `random` and numpy in
`__getitem__`, dropout; `num_workers` 0 and 2). The runs are tests/ignite_stateful_run.py.
"""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.plain_loop import max_difference
from tests._resume import assert_starts

SCRIPT = Path(__file__).resolve().parent / "ignite_stateful_run.py"
ITERATIONS = 24  # 3 epochs of 8


def run(out: Path, workers: int, kill_at: int = -1) -> int:
    """One process of the script; its output goes to a file, not a pipe (a killed run's workers
    may outlive it by a few seconds, holding a pipe open)."""
    out.mkdir(exist_ok=True)
    with open(out / "log.txt", "a") as log:
        return subprocess.run([sys.executable, str(SCRIPT), str(out), "--workers", str(workers), "--kill-at", str(kill_at)],
                              stdout=log, stderr=subprocess.STDOUT, timeout=240).returncode


def batches(out: Path):
    """[(iteration, x, y)] in the order the runs in `out` trained them."""
    return [(e["iteration"], e["x"], e["y"]) for e in map(json.loads, (out / "batches.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("workers", [0, 2])
def test_two_sigkills_in_one_epoch_resume_exactly(tmp_path, workers):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole, workers) == 0, (whole / "log.txt").read_text()
    for kill_at in (11, 14):  # the second epoch's 3rd and 6th iterations
        assert run(killed, workers, kill_at) == -signal.SIGKILL, (killed / "log.txt").read_text()
    assert run(killed, workers) == 0, (killed / "log.txt").read_text()

    assert_starts(killed, 0, 11, 14)
    assert [b[0] for b in batches(killed)] == list(range(1, ITERATIONS + 1))
    expected, got = (torch.load(d / "final.pt", weights_only=True) for d in (whole, killed))
    print(f"num_workers={workers}: max abs diff {max_difference(got, expected)}")
    differ = [i for (i, *ours), (_, *theirs) in zip(batches(killed), batches(whole)) if ours != theirs]
    assert not differ, f"the batches of iterations {differ} differ from the uninterrupted run's"
    for key in ("model", "optimizer"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
