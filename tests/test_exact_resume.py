"""
Bit-exact resume, end to end: real `allennlp train` runs (dropout, shuffled batches, Adam, a
learning-rate schedule) SIGKILLed at several points and `--recover`ed end with weights, optimizer
state and best.th equal, tensor by tensor, to an uninterrupted run's, having resumed at their
newest checkpoint (every run seeds alike, so a restart from 0 would end equal too: tests/_resume.py).
"""
import logging
import random
import re

import numpy
import pytest
import torch

from scripts.resume_drift import final_states, max_difference, train, variables
from tests._resume import newest_allennlp_checkpoint, resumed
from tests.conftest import ROOT, trainer_at
from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt.core.rng import capture_rng, restore_rng
from trainer_ckpt.faces.allennlp.trainer import KEY

VARIANTS = {  # name: (accumulation, moving average, distributed), {kill point: the newest checkpoint then}
    # inside, after a boundary, first, last epoch (saves every 5 batches)
    "plain": ((1, False, False), {"1:12": (1, 10), "2:1": (2, 0), "0:7": (0, 5), "2:13": (2, 10)}),
    "accumulation_3": ((3, False, False), {"1:6": (1, 5)}),  # 7 batch groups an epoch
    "moving_average": ((1, True, False), {"1:12": (1, 10)}),
    # Killed and recovered in test_time_based_saves_under_ddp_follow_rank_0_and_resume_bit_exact.
    "two_gloo_processes": ((1, False, True), {}),
}
CASES = [(name, kill, newest) for name, (_, kills) in VARIANTS.items() for kill, newest in kills.items()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each variant, trained once per module."""
    done = {}

    def get(name):
        if name not in done:
            (accumulation, moving_average, distributed), _ = VARIANTS[name]
            out = tmp_path_factory.mktemp(f"full_{name}")
            train(out, variables("trainer_ckpt", accumulation, moving_average), distributed=distributed)
            done[name] = final_states(out)
        return done[name]

    return get


@pytest.mark.parametrize("name, kill_at, newest", CASES, ids=[f"{n}-killed_at_{k.replace(':', '_')}" for n, k, _ in CASES])
def test_recovered_run_is_bit_identical(tmp_path, uninterrupted, name, kill_at, newest):
    (accumulation, moving_average, distributed), _ = VARIANTS[name]
    env = variables("trainer_ckpt", accumulation, moving_average)
    train(tmp_path, env, kill_at=kill_at, distributed=distributed)
    assert newest_allennlp_checkpoint(tmp_path) == newest
    with resumed(tmp_path, at=newest):
        train(tmp_path, env, recover=True, distributed=distributed)
    assert max_difference(uninterrupted(name), final_states(tmp_path)) == 0.0


def test_generator_states_survive_weights_only_loading(tmp_path):
    random.seed(1), numpy.random.seed(2), torch.manual_seed(3)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.th")
    expected = (random.random(), numpy.random.rand(), torch.rand(3))
    random.seed(9), numpy.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.th", weights_only=True))
    got = (random.random(), numpy.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_checkpoints_without_random_state_resume_with_a_warning(tmp_path, caplog):
    from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

    AllenNlpCheckpointer(str(tmp_path)).maybe_save_checkpoint(trainer_at(1, 0), 1, 0)
    with caplog.at_level(logging.WARNING):
        checkpoint = DefaultCheckpointer(tmp_path).load_checkpoint()
    assert checkpoint.trainer_state["epochs_completed"] == 1
    assert "Checkpoint e1_b0 carries no random state" in caplog.text and "not exactly" in caplog.text


def test_restore_rng_false_leaves_randomness_alone(tmp_path):
    DefaultCheckpointer(tmp_path).save_checkpoint(trainer_at(1, 0))
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    loaded = DefaultCheckpointer(tmp_path, restore_rng=False).load_checkpoint()
    assert KEY not in loaded.trainer_state  # handed to the trainer as AllenNLP's own dict
    assert torch.equal(torch.rand(2), expected)


def test_a_changed_setup_is_named_on_resume(tmp_path, caplog):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"num_epochs": 3, "optimizer": {"lr": 0.01}}}))
    checkpointer = DefaultCheckpointer(tmp_path)
    checkpointer.save_checkpoint(trainer_at(1, 0))
    checkpointer.close()
    record = tmp_path / "checkpoint_e1_b0.json"
    saved = json.loads(record.read_text())
    saved["world_size"], saved["versions"]["torch"] = 4, "1.12.1"
    record.write_text(json.dumps(saved))
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"num_epochs": 5, "optimizer": {"lr": 0.01}}}))
    with caplog.at_level(logging.WARNING):
        DefaultCheckpointer(tmp_path).load_checkpoint()
    assert (
        "Resuming from checkpoint e1_b0, which a different setup wrote: config keys trainer.num_epochs (3 -> 5); "
        "world size (4 -> 1); torch version (1.12.1 -> " in caplog.text
    )


class LoaderTrainer:
    """The parts of AllenNLP's trainer the resume hooks use: a data loader, progress, callbacks."""

    def __init__(self, batches, callbacks=()):
        self.data_loader, self._epochs_completed, self._callbacks = batches, 0, list(callbacks)
        self._num_gradient_accumulation_steps, self.model = 1, type("Model", (), {})()


def test_the_resumed_epoch_replays_the_shuffle_and_the_random_stream(tmp_path):
    from allennlp.training.callbacks import ShouldValidateCallback, TrackEpochCallback
    from trainer_ckpt.faces.allennlp.trainer import Plan, ResumeTracker

    class Shuffled(list):
        def __iter__(self):  # shuffles when first advanced, as AllenNLP's loader does
            order = list(range(len(self)))
            random.shuffle(order)
            return (self[i] for i in order)

    def draws(trainer, tracker, epochs):
        seen = []
        for epoch in epochs:
            trainer._epochs_completed = epoch
            for batch in trainer.data_loader:
                seen.append((epoch, batch, round(random.random(), 6)))
        return seen

    random.seed(0)
    original = LoaderTrainer(Shuffled(range(6)))
    tracker = ResumeTracker(restore=True)
    tracker.attach(original)
    epoch_0_start = capture_rng()
    draws(original, tracker, [0])
    # Epoch 0 ran through the proxy too: it took the random state at the epoch's start (before the shuffle).
    assert tracker.epoch_start[0] == 0 and tracker.epoch_start[1]["python"] == epoch_0_start["python"]
    assert torch.equal(tracker.epoch_start[1]["torch"], epoch_0_start["torch"])
    original._epochs_completed = 1
    iterator = iter(original.data_loader)
    head = [(1, next(iterator), round(random.random(), 6)) for _ in range(2)]
    saved = tracker.state(original, 1, 2, world_size=1)["ranks"][0]  # a checkpoint after batch 2 of epoch 1
    tail = [(1, b, round(random.random(), 6)) for b in iterator]

    random.seed(123)  # a new process: other random state, and AllenNLP replays epoch 0 first
    resumed_trainer = LoaderTrainer(Shuffled(range(6)), [TrackEpochCallback(str(tmp_path)), ShouldValidateCallback(str(tmp_path), validation_start=1)])
    again = ResumeTracker(restore=True)
    again.attach(resumed_trainer)
    again.plan = Plan(1, 2, saved["epoch_start"], saved["save_point"], None)
    draws(resumed_trainer, again, [0])  # the replay of epoch 0: reshuffles, consumes randomness
    resumed_trainer._epochs_completed = 1
    iterator = iter(resumed_trainer.data_loader)
    replayed_head = [next(iterator) for _ in range(2)]  # skipped by the trainer: no forward pass
    resumed_tail = [(1, b, round(random.random(), 6)) for b in iterator]
    assert replayed_head == [b for _, b, _ in head]
    assert resumed_tail == tail
    assert resumed_trainer.model.epoch == 1 and resumed_trainer._should_validate_this_epoch is True


def test_configurations_that_cannot_resume_exactly_are_warned_about(caplog):
    from trainer_ckpt.faces.allennlp.trainer import ResumeTracker

    class Loader(list):
        num_workers, max_instances_in_memory = 2, 100

    with caplog.at_level(logging.WARNING):
        ResumeTracker(restore=True).attach(LoaderTrainer(Loader([1, 2])))
    assert "Data loader workers (num_workers > 0) with max_instances_in_memory reseed python's random" in caplog.text


def test_time_based_saves_under_ddp_follow_rank_0_and_resume_bit_exact(tmp_path, uninterrupted):
    """A real 2-process `allennlp train` (gloo, CPU) saving every 4 seconds of a clock that runs 3x
    faster on rank 1: both ranks save at the same batches, and after a SIGKILL the `--recover`ed
    run ends bit-identical to the uninterrupted one (which saved every 5 batches)."""
    from scripts.main_job import allennlp_train

    config = ROOT / "fixtures" / "configs" / "time_saves_distributed.jsonnet"
    env = variables("trainer_ckpt", 1, False)
    packages = ("trainer_ckpt", "kill_switch", "fake_clock")
    killed = allennlp_train(config, tmp_path, kill_at="1:6", env=env, packages=packages)
    assert killed.returncode != 0
    before = [[tuple(map(int, p.split(":"))) for p in (tmp_path / f"saves_rank{r}.txt").read_text().split()] for r in range(2)]
    assert before[0] == before[1] and len(before[0]) >= 3, before
    newest = before[0][-1]  # both ranks resume from the newest save, on both ranks' clocks
    assert newest_allennlp_checkpoint(tmp_path) == newest, newest
    with resumed(tmp_path, at=newest, ranks=2):
        recovered = allennlp_train(config, tmp_path, recover=True, env=env, packages=packages)
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    after = [[tuple(map(int, p.split(":"))) for p in (tmp_path / f"saves_rank{r}.txt").read_text().split()] for r in range(2)]
    assert after[0] == after[1] and after[0][:len(before[0])] == before[0], after
    added = after[0][len(before[0]):]  # the recovered run's saves: after the resume point, up to the end
    assert added and added[0] > newest and added[-1] == (3, 0) and added == sorted(added), after
    assert max_difference(uninterrupted("two_gloo_processes"), final_states(tmp_path)) == 0.0


def test_a_new_machine_resumes_from_the_bucket_bit_exact(tmp_path, uninterrupted, bucket, endpoint):
    """A real `allennlp train` uploading to S3 (a real S3-compatible server on 127.0.0.1) is
    SIGKILLed; a plain `allennlp train` into a new, empty serialization directory (another
    machine) resumes from the bucket and ends bit-identical to the uninterrupted run."""
    from scripts.main_job import allennlp_train

    url, _, fs = bucket
    config = ROOT / "fixtures" / "configs" / "exact_resume_bucket.jsonnet"
    env = {**variables("trainer_ckpt", 1, False), "TRAINER_CKPT_TEST_BUCKET": f"{url}/run", "TRAINER_CKPT_TEST_ENDPOINT": endpoint}
    killed = allennlp_train(config, tmp_path / "machine_a", kill_at="1:12", env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # Uploads run in the background: the kill may land during the newest one's upload; the
    # newest checkpoint whose record is in the bucket is the one to resume from.
    fs.invalidate_cache()
    records = [re.fullmatch(r"checkpoint_e(\d+)_b(\d+)\.json", p.rsplit("/", 1)[-1]) for p in fs.ls(f"{url[5:]}/run", detail=False)]
    newest = max((int(m[1]), int(m[2])) for m in records if m)  # fails on no record at all
    # The killed run's lease on the prefix is live for up to a minute, which a new machine waits
    # out (tests/test_remote_background.py): here its lock object goes now, as if it had expired.
    fs.rm_file(f"{url[5:]}/run/.trainer_ckpt.lock")
    with resumed(tmp_path / "machine_b", at=newest):
        again = allennlp_train(config, tmp_path / "machine_b", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (tmp_path / "machine_b" / "out.log").read_text()
    name = "e%d_b%d" % newest
    assert f"Downloaded checkpoint checkpoint_{name}.json from" in log and f"Restoring checkpoint {name}" in log
    assert max_difference(uninterrupted("plain"), final_states(tmp_path / "machine_b")) == 0.0
