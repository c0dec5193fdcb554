"""
Several resumes within one epoch under `allennlp train --recover`: a run SIGKILLed after batch 7
of its second epoch, recovered, SIGKILLed again after batch 13 of the same epoch, and recovered to
the end, resumes at its newest checkpoint each time (batches 5 and 10: saves every 5 batches) and
ends bit-identical to an uninterrupted run (weights, optimizer and schedule state, best.th).
The run: fixtures/configs/exact_resume.jsonnet (dropout, shuffled batches, Adam, a slanted
triangular schedule), for two epochs of 20 batches.
"""
from concurrent.futures import ThreadPoolExecutor

import torch

from scripts.main_job import allennlp_train
from scripts.resume_drift import max_difference, variables
from tests._resume import assert_starts, newest_allennlp_checkpoint, resumed
from tests.conftest import ROOT

# One intra-op thread: on a loaded machine, torch's thread pool makes an epoch 40x slower (20 s, not 0.5 s).
ENV = {**variables("trainer_ckpt", 1, False), "OMP_NUM_THREADS": "1"}


def config(tmp_path):
    """exact_resume.jsonnet, for two epochs."""
    path = tmp_path / "two_epochs.jsonnet"
    path.write_text(f'(import "{ROOT / "fixtures" / "configs" / "exact_resume.jsonnet"}") + {{ trainer+: {{ num_epochs: 2 }} }}\n')
    return path


def train(config, directory, kill_at=None, recover=False):
    run = allennlp_train(config, directory, kill_at=kill_at, recover=recover, env=ENV)
    assert run.returncode == (-9 if kill_at else 0), run.stderr[-3000:]


def final_states(directory):
    """What must match: the final weights, the optimizer's and schedule's state, best.th."""
    training = torch.load(directory / "training_state_e2_b0.th", weights_only=True)
    return {"model": torch.load(directory / "model_state_e2_b0.th", weights_only=True),
            "optimizer": training["optimizer"], "schedule": training["learning_rate_scheduler"],
            "best": torch.load(directory / "best.th", weights_only=True)}


def test_two_sigkills_within_an_epoch_each_recovered_end_bit_identical(tmp_path):
    path = config(tmp_path)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    with ThreadPoolExecutor(1) as pool:
        uninterrupted = pool.submit(train, path, straight)  # alongside: most of a run is start-up
        train(path, interrupted, kill_at="1:7")
        assert newest_allennlp_checkpoint(interrupted) == (1, 5)
        with resumed(interrupted, at=(1, 5)):
            train(path, interrupted, kill_at="1:13", recover=True)
        assert newest_allennlp_checkpoint(interrupted) == (1, 10)
        with resumed(interrupted, at=(1, 10)):
            train(path, interrupted, recover=True)
        uninterrupted.result()
    assert_starts(interrupted, (0, 0), (1, 5), (1, 10))
    assert_starts(straight, (0, 0))
    assert max_difference(final_states(straight), final_states(interrupted)) == 0.0
