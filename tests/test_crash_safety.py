"""
A real SIGKILL at random moments of a saving loop (writes, renames, retention deletes): a fresh
process must still find the newest complete checkpoint, with the contents its name promises.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, listing, names, saved
from trainer_ckpt import DefaultCheckpointer

SAVER = """
import sys, torch
from allennlp.training.trainer import TrainerCheckpoint
from trainer_ckpt import DefaultCheckpointer

class Trainer:
    def get_checkpoint_state(self):
        return TrainerCheckpoint({"w": torch.full((4_000_000,), float(i))},  # 16 MB
                                 {"epochs_completed": i, "batches_in_epoch_completed": 0, "i": i})

checkpointer = DefaultCheckpointer(sys.argv[1], keep_most_recent_by_count=2)
for i in range(1, 10_000):
    checkpointer.maybe_save_checkpoint(Trainer(), i, 0)
"""


@pytest.mark.parametrize("trial", range(4))
def test_sigkill_at_a_random_moment_of_saving(tmp_path, trial):
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not saved(tmp_path):  # wait for the first complete checkpoint: the loop is running
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(random.Random(trial).uniform(0.0, 0.5))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    checkpoint = DefaultCheckpointer(tmp_path).load_checkpoint()
    assert checkpoint is not None
    i = checkpoint.trainer_state["i"]
    assert saved(tmp_path)[-1] == (i, 0)
    assert torch.equal(checkpoint.model_state["w"], torch.full((4_000_000,), float(i)))
    # Whatever the kill left half-done is gone after the load: only complete pairs remain.
    assert listing(tmp_path) == names(*saved(tmp_path))
