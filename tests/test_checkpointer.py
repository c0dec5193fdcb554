"""DefaultCheckpointer with a fake trainer and a temp dir; the directory listing is the assertion."""
import os
from typing import List, Sequence

import pytest
import torch
from allennlp.training.checkpointer import Checkpointer as AllenNlpCheckpointer

from tests.conftest import FakeTrainer, listing, names, saved, trainer_at
from trainer_ckpt import CheckpointInfo, DefaultCheckpointer, KeepAny, KeepBest, KeepMostRecentByCount, RetentionPolicy, SaveAny
from trainer_ckpt.save_policies import SaveBestSoFar, SaveLastEpoch
from trainer_ckpt import stores
from trainer_ckpt.io import durable


def run(checkpointer, points):
    """Drives the checkpointer as the trainer does; returns the points where it saved."""
    return [p for p in points if checkpointer.maybe_save_checkpoint(trainer_at(*p), *p)]


def epochs(n, batches=(5, 10, 15, 20)):
    """The trainer's calls for n epochs: after each batch group, then at the epoch end."""
    points = []
    for e in range(n):
        points += [(e, b) for b in batches] + [(e + 1, 0)]
    return points


def test_default_saves_epochs_and_keeps_two(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path)
    assert run(checkpointer, epochs(5)) == [(e, 0) for e in range(1, 6)]
    assert listing(tmp_path) == names((4, 0), (5, 0))


def test_every_num_batches_keep_three(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, save_every_num_batches=10, keep_most_recent_by_count=3)
    assert run(checkpointer, epochs(2, batches=range(1, 21))) == [
        (0, 10), (0, 20), (1, 0), (1, 10), (1, 20), (2, 0)
    ]
    assert listing(tmp_path) == names((1, 20), (2, 0), (1, 10))


def test_time_based_saving_reads_the_injected_clock(tmp_path, clock):
    checkpointer = DefaultCheckpointer(
        tmp_path, save_completed_epochs=False, save_every_num_seconds=60, keep_most_recent_by_count=None, clock=clock
    )
    got = []
    for b in range(1, 11):
        clock.now += 25  # 25 s per batch: a save every third batch (75 s >= 60 s)
        if checkpointer.maybe_save_checkpoint(trainer_at(0, b), 0, b):
            got.append(b)
    assert got == [3, 6, 9]
    assert saved(tmp_path) == [(0, 3), (0, 6), (0, 9)]


def test_keep_by_age_uses_save_times_from_disk(tmp_path, clock):
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=None, keep_most_recent_by_age=25, clock=clock)
    for e in range(1, 6):
        clock.now += 10
        checkpointer.save_checkpoint(trainer_at(e, 0))
    # Saved at +10 ... +50; now is +50: ages 40, 30, 20, 10, 0.
    assert saved(tmp_path) == [(3, 0), (4, 0), (5, 0)]
    # A new process (after --recover) sees the same ages, from the files alone.
    clock.now += 15
    DefaultCheckpointer(tmp_path, keep_most_recent_by_count=None, keep_most_recent_by_age=25, clock=clock).save_checkpoint(trainer_at(6, 0))
    assert saved(tmp_path) == [(4, 0), (5, 0), (6, 0)]  # ages 35, 25, 15, 0


def test_count_or_age(tmp_path, clock):
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=1, keep_most_recent_by_age=15, clock=clock)
    for e in range(1, 5):
        clock.now += 10
        checkpointer.save_checkpoint(trainer_at(e, 0))
    assert saved(tmp_path) == [(3, 0), (4, 0)]


def test_allennlp_2_4_keys_keep_one_per_window(tmp_path, clock):
    checkpointer = DefaultCheckpointer(
        tmp_path, num_serialized_models_to_keep=2, keep_serialized_model_every_num_seconds=100, clock=clock
    )
    for e in range(1, 11):
        clock.now += 30  # saves at 30, 60, ..., 300 after the start: windows keep 120 (> 100), 240 (> 220)
        checkpointer.save_checkpoint(0 + e - 1, trainer_at(e, 0))  # 2.4's save_checkpoint(epoch, trainer)
    assert saved(tmp_path) == [(4, 0), (8, 0), (9, 0), (10, 0)]


class Trainer24(FakeTrainer):
    """AllenNLP 2.4's test trainer: its training state says only the epoch."""

    def __init__(self, epoch: int):
        super().__init__({"epoch": torch.tensor(epoch)}, {"epoch": epoch})


def _allennlp_2_4_window_run(tmp_path, clock, restart_after=None):
    """
    AllenNLP 2.4's own test_keep_serialized_model_every_num_seconds, with the clock injected
    instead of time.sleep: 30 epoch saves, keep 10, windows of 1 s, 2 s pauses before epochs 5, 18
    and 26. With `restart_after=E` the process "dies" after saving epoch E and a new checkpointer
    resumes (2.4's restore_checkpoint) during the next pause, as `--recover` would.
    """
    def make():
        return DefaultCheckpointer(
            tmp_path, num_serialized_models_to_keep=10, keep_serialized_model_every_num_seconds=1, clock=clock
        )

    checkpointer = make()
    for e in range(30):
        if e in (5, 18, 26):
            clock.now += 2.0
            if restart_after == e - 1:
                checkpointer.close()
                checkpointer = make()
                model_state, training_state = checkpointer.restore_checkpoint()
                assert training_state["epoch"] == e - 1
        clock.now += 0.01
        checkpointer.save_checkpoint(epoch=e, trainer=Trainer24(e), is_best_so_far=False)
    return [epochs_completed - 1 for epochs_completed, _ in saved(tmp_path)]  # back to 2.4's epoch index


def test_allennlp_2_4_own_window_test(tmp_path, clock):
    assert _allennlp_2_4_window_run(tmp_path, clock) == [5, 18] + list(range(20, 30))  # 26 is among the 10 newest


@pytest.mark.parametrize("restart_after", [4, 17])
def test_window_anchor_survives_a_restart(tmp_path, clock, restart_after):
    # Restarting during the pause before epoch 5 (or 18): a window anchored at the new process'
    # start would drop epoch 5 (or 18); the run's recorded start keeps it.
    assert _allennlp_2_4_window_run(tmp_path, clock, restart_after) == [5, 18] + list(range(20, 30))  # 26 is among the 10 newest


class KeepNothing(RetentionPolicy):
    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [False] * len(checkpoints)


def test_newest_complete_checkpoint_survives_any_policy(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, retention_policy=KeepNothing())
    for e in range(1, 4):
        assert checkpointer.maybe_save_checkpoint(trainer_at(e, 0), e, 0)
        # The trainer links best.th to the newest checkpoint right after a save.
        assert checkpointer.find_latest_checkpoint() == tuple(
            str(tmp_path / n) for n in (f"model_state_e{e}_b0.th", f"training_state_e{e}_b0.th")
        )
    assert listing(tmp_path) == names((3, 0))


class WrongLength(RetentionPolicy):
    def should_keep(self, checkpoints, now):
        return [True]


def test_a_policy_returning_the_wrong_mask_is_reported(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, retention_policy=WrongLength())
    checkpointer.save_checkpoint(trainer_at(1, 0))
    with pytest.raises(ValueError, match=r"WrongLength.should_keep: must return one flag per checkpoint, got 1 flags for 2"):
        checkpointer.save_checkpoint(trainer_at(2, 0))
    assert saved(tmp_path) == [(1, 0), (2, 0)]


def test_retention_touches_nothing_it_did_not_write(tmp_path):
    others = ["best.th", "notes.txt", "model_state_e0_b1.th.bak", "my_model_state_e0_b1.th",
              "model_state_epoch_0.th", "model_state_e0_b1_w1.th", "training_state_e0_b1_w1.th"]
    for name in others:
        (tmp_path / name).write_bytes(b"user data")
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=1)
    run(checkpointer, epochs(3))
    assert listing(tmp_path) == sorted(others + names((3, 0)))
    assert all((tmp_path / n).read_bytes() == b"user data" for n in others)


def test_load_returns_the_newest_complete_checkpoint_and_cleans_up(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=None)
    run(checkpointer, epochs(2))
    # What a kill leaves: a model state whose training state never landed, a bare training state
    # (a deletion cut short), and a temp file of a writer that is gone.
    durable.atomic_save({"weight": torch.zeros(3)}, str(tmp_path / "model_state_e2_b5.th"))
    durable.atomic_save({}, str(tmp_path / "training_state_e0_b5.th"))
    (tmp_path / ".training_state_e2_b5.th.tmp-999999999-00ff").write_bytes(b"torn")
    (tmp_path / "best.th").write_bytes(b"x")

    fresh = DefaultCheckpointer(tmp_path)
    model_state, training_state = fresh.load_checkpoint()
    torch.testing.assert_close(model_state["weight"], torch.full((3,), 2000.0))
    assert (training_state["epochs_completed"], training_state["batches_in_epoch_completed"]) == (2, 0)
    assert listing(tmp_path) == sorted(names((1, 0), (2, 0)) + ["best.th"])


def test_nothing_to_load(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path / "does_not_exist_yet")
    assert checkpointer.find_latest_checkpoint() is None
    assert checkpointer.load_checkpoint() is None
    assert checkpointer.restore_checkpoint() == ({}, {})
    assert checkpointer.best_model_state() == {}


def test_incomplete_files_are_kept_when_nothing_is_complete(tmp_path):
    durable.atomic_save({}, str(tmp_path / "model_state_e1_b0.th"))
    assert DefaultCheckpointer(tmp_path).load_checkpoint() is None
    assert listing(tmp_path) == ["model_state_e1_b0.th"]


def test_a_failed_save_leaves_the_last_checkpoint_loadable(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path)
    checkpointer.save_checkpoint(trainer_at(1, 0))
    broken = FakeTrainer({"weight": torch.ones(2)}, {"epochs_completed": 2, "batches_in_epoch_completed": 0, "bad": lambda: 0})
    with pytest.raises(Exception):
        checkpointer.save_checkpoint(broken)
    assert saved(tmp_path) == [(1, 0)]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    model_state, _ = DefaultCheckpointer(tmp_path).restore_checkpoint()
    torch.testing.assert_close(model_state["weight"], torch.full((3,), 1000.0))


def test_cadence_resumes_from_the_restored_point(tmp_path):
    first = DefaultCheckpointer(tmp_path, save_every_num_batches=5)
    run(first, [(1, b) for b in range(1, 13)])  # saved e1_b5, e1_b10; killed at b12
    second = DefaultCheckpointer(tmp_path, save_every_num_batches=5)
    assert second.load_checkpoint() is not None
    assert run(second, [(1, b) for b in range(11, 21)] + [(2, 0)]) == [(1, 15), (1, 20), (2, 0)]


def test_allennlp_reads_ours_and_we_read_allennlps(tmp_path):
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir(), theirs_dir.mkdir()
    run(DefaultCheckpointer(ours_dir, save_every_num_batches=10), epochs(2))
    run(AllenNlpCheckpointer(str(theirs_dir), save_every_num_batches=10), epochs(2))
    assert listing(theirs_dir) == names((1, 20), (2, 0), record=False)
    assert listing(ours_dir) == names((1, 20), (2, 0))
    for reader_cls, directory in ((AllenNlpCheckpointer, ours_dir), (DefaultCheckpointer, theirs_dir)):
        model_state, training_state = reader_cls(str(directory)).load_checkpoint()
        torch.testing.assert_close(model_state["weight"], torch.full((3,), 2000.0))
        assert training_state["epochs_completed"] == 2


def test_allennlp_2_4_api(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path)
    checkpointer.save_checkpoint(0, FakeTrainer({"weight": torch.ones(2)}, {"optimizer": {}}), is_best_so_far=True)
    checkpointer.save_checkpoint(epoch=1, trainer=FakeTrainer({"weight": torch.zeros(2)}, {"optimizer": {}}))
    assert listing(tmp_path) == sorted(["best.th"] + names((1, 0), (2, 0)))
    torch.testing.assert_close(checkpointer.best_model_state()["weight"], torch.ones(2))
    model_state, training_state = checkpointer.restore_checkpoint()
    torch.testing.assert_close(model_state["weight"], torch.zeros(2))
    assert training_state == {"optimizer": {}, "epoch": 1}
    with pytest.raises(TypeError):
        checkpointer.save_checkpoint()


class NonPrimaryTrainer(FakeTrainer):
    def get_checkpoint_state(self):
        return None  # what AllenNLP's trainer returns on a non-primary rank with unsharded state


def test_non_primary_rank_writes_nothing_but_keeps_the_cadence(tmp_path):
    checkpointer = DefaultCheckpointer(tmp_path, save_completed_epochs=False, save_every_num_batches=5)
    got = [b for b in range(1, 16) if checkpointer.maybe_save_checkpoint(NonPrimaryTrainer(None, None), 0, b)]
    assert got == [5, 10, 15]
    assert listing(tmp_path) == []


def sharded_pair(directory):
    pair = [DefaultCheckpointer(directory) for _ in range(2)]
    for rank, c in enumerate(pair):
        c._rank, c._world_size, c.state_is_sharded = rank, 2, True  # as AllenNLP's own test does
    return pair


def test_sharded_state_one_file_pair_per_rank(tmp_path):
    ranks = sharded_pair(tmp_path)
    for e, b in epochs(3):
        for rank, c in enumerate(ranks):
            c.maybe_save_checkpoint(trainer_at(e, b, rank=rank), e, b)
    assert listing(tmp_path) == sorted(names((2, 0), (3, 0), rank=0) + names((2, 0), (3, 0), rank=1))
    # Rank 0 finished e4_b0, rank 1 was killed before: both must restore e3_b0.
    ranks[0].save_checkpoint(trainer_at(4, 0, rank=0))
    for rank, c in enumerate(sharded_pair(tmp_path)):
        model_state, training_state = c.load_checkpoint()
        assert training_state == {"epochs_completed": 3, "batches_in_epoch_completed": 0, "rank": rank}
    assert not (tmp_path / "model_state_e4_b0_w0.th").exists()  # the incomplete one was cleaned up


class EpochTrainer(FakeTrainer):
    """A fake trainer that also has what AllenNLP's trainer exposes about validation."""

    def __init__(self, num_epochs, metric="+accuracy", patience=None):
        from allennlp.training.metric_tracker import MetricTracker

        super().__init__(None, None)
        self._callbacks, self._num_epochs, self._total_batches_completed = [], num_epochs, 0
        self._metric_tracker = MetricTracker(metric, patience)

    def train(self, checkpointer, accuracies, batches=4):
        """Runs epochs the way GradientDescentTrainer calls its checkpointer and callbacks."""
        for e, accuracy in enumerate(accuracies):
            for b in range(1, batches + 1):
                self._total_batches_completed += 1
                self._model_state, self._training_state = trainer_at(e, b).get_checkpoint_state()
                checkpointer.maybe_save_checkpoint(self, e, b)
            metrics = {"accuracy": accuracy, "loss": 1 - accuracy}
            self._metric_tracker.add_metrics(metrics)
            for callback in self._callbacks:
                callback.on_epoch(self, metrics={f"validation_{k}": v for k, v in metrics.items()}, epoch=e)
            self._model_state, self._training_state = trainer_at(e + 1, 0).get_checkpoint_state()
            checkpointer.maybe_save_checkpoint(self, e + 1, 0)
            if self._metric_tracker.should_stop_early():
                break


def records(directory, prefix=""):
    return {f.progress: f.record for f in stores.CheckpointDir(str(directory), prefix).list(None).complete}


def test_records_hold_what_the_trainer_knew(tmp_path, clock):
    checkpointer = DefaultCheckpointer(tmp_path, save_every_num_batches=2, keep_most_recent_by_count=None, clock=clock)
    EpochTrainer(num_epochs=2).train(checkpointer, [0.5, 0.4])
    got = records(tmp_path)
    assert list(got) == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
    assert got[(1, 0)]["metrics"] == {"accuracy": 0.5, "loss": 0.5} and got[(1, 0)]["is_best_so_far"]
    assert got[(2, 0)]["metrics"] == {"accuracy": 0.4, "loss": 0.6} and not got[(2, 0)]["is_best_so_far"]
    assert got[(1, 2)]["metrics"] == {} and got[(1, 2)]["total_batches_completed"] == 6
    assert {r["time"] for r in got.values()} == {clock.now}


def test_best_k_and_last_epoch_from_a_trainer(tmp_path):
    checkpointer = DefaultCheckpointer(
        tmp_path,
        save_policy=SaveAny([SaveBestSoFar(), SaveLastEpoch()]),
        retention_policy=KeepAny([KeepBest("+accuracy", count=2), KeepMostRecentByCount(1)]),
    )
    trainer = EpochTrainer(num_epochs=10, patience=2)
    trainer.train(checkpointer, [0.5, 0.7, 0.6, 0.8, 0.75, 0.7, 0.9])  # patience runs out after epoch 6
    # Saved when best (e1, e2, e4) and at the last epoch run (e6, early stopping); kept: the best 2 + the newest.
    assert saved(tmp_path) == [(2, 0), (4, 0), (6, 0)]
    explained = {c.name: reasons for c, reasons in checkpointer.explain()}
    assert explained == {
        "e2_b0": ["best(+accuracy, count=2)"],
        "e4_b0": ["best(+accuracy, count=2)"],
        "e6_b0": ["most_recent_by_count(1)", "newest complete checkpoint (always kept)"],
    }


def test_deletions_are_logged_with_the_rule(tmp_path, caplog):
    checkpointer = DefaultCheckpointer(tmp_path, keep_most_recent_by_count=1)
    with caplog.at_level("INFO", logger="trainer_ckpt"):
        run(checkpointer, epochs(2))
    assert f"Deleting checkpoint e1_b0 in {tmp_path}: retention policy most_recent_by_count(1) does not keep it" in caplog.text


def test_two_checkpointers_share_a_directory(tmp_path):
    periodic = DefaultCheckpointer(tmp_path, save_every_num_batches=5, keep_most_recent_by_count=1)
    best = DefaultCheckpointer(tmp_path, filename_prefix="best_", retention_policy=KeepBest("+accuracy"),
                               save_policy=SaveBestSoFar())
    (tmp_path / "best.th").write_bytes(b"x")
    trainer = EpochTrainer(num_epochs=3)
    trainer._callbacks = []

    class Both:
        def maybe_save_checkpoint(self, t, e, b):
            return [c.maybe_save_checkpoint(t, e, b) for c in (periodic, best)]

    trainer.train(Both(), [0.5, 0.7, 0.6], batches=10)
    assert listing(tmp_path) == sorted(names((3, 0)) + names((2, 0), prefix="best_") + ["best.th"])
    assert periodic.find_latest_checkpoint()[0].endswith("/model_state_e3_b0.th")
    assert best.find_latest_checkpoint()[0].endswith("/best_model_state_e2_b0.th")
    # Each one's load and clean-up sees only its own files.
    (tmp_path / "best_model_state_e3_b5.th").write_bytes(b"torn")
    assert DefaultCheckpointer(tmp_path).load_checkpoint().trainer_state["epochs_completed"] == 3
    assert (tmp_path / "best_model_state_e3_b5.th").exists()
    assert DefaultCheckpointer(tmp_path, filename_prefix="best_").load_checkpoint().trainer_state["epochs_completed"] == 2
    assert not (tmp_path / "best_model_state_e3_b5.th").exists()
